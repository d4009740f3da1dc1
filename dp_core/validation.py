"""Small validators shared by mechanisms, schedules and the facade; each raises InvalidParameterError."""

from __future__ import annotations

import math
import numbers

from dp_core.errors import InvalidParameterError


def finite_float(name: str, value: object) -> float:
    """Return ``value`` as a float, refusing bools, non-numbers, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(name, value, "must be a real number")
    result = float(value)
    if not math.isfinite(result):
        raise InvalidParameterError(name, value, "must be finite")
    return result


def positive_float(name: str, value: object) -> float:
    """Return a finite float > 0."""
    result = finite_float(name, value)
    if result <= 0.0:
        raise InvalidParameterError(name, value, "must be > 0")
    return result


def probability(name: str, value: object) -> float:
    """Return a finite float in [0, 1]."""
    result = finite_float(name, value)
    if not 0.0 <= result <= 1.0:
        raise InvalidParameterError(name, value, "must be in [0, 1]")
    return result


def open_probability(name: str, value: object) -> float:
    """Return a finite float in the open interval (0, 1) (e.g. delta)."""
    result = finite_float(name, value)
    if not 0.0 < result < 1.0:
        raise InvalidParameterError(name, value, "must be in (0, 1)")
    return result


def non_negative_int(name: str, value: object) -> int:
    """Return an int >= 0 (integral floats such as 3.0 are accepted)."""
    if isinstance(value, bool):
        raise InvalidParameterError(name, value, "must be an integer")
    if (
        isinstance(value, numbers.Integral)
        or isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
    ):
        result = int(value)
    else:
        raise InvalidParameterError(name, value, "must be an integer")
    if result < 0:
        raise InvalidParameterError(name, value, "must be >= 0")
    return result
