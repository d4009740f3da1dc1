"""Exact fixed-point RDP vectors: the ledger's arithmetic never rounds.

Every RDP value the ledger keeps is an integer number of quanta of 2^-64 (``None`` is +inf, an
order with no bound). Sums, differences and multiples of such vectors are exact, so the
invariants ``committed <= reserved <= capacity`` hold exactly, whatever the order of operations,
and a finished run's reservation equals its charges to the last quantum. Values enter the ledger
rounded toward privacy: costs up (:func:`from_floats_up`), capacities down
(:func:`from_floats_down`); they leave it as the smallest float not below the exact value
(:func:`to_floats_up`), so a reported number never understates what is stored.

A quantum of 2^-64 (5.4e-20) is far below any RDP value that matters; rounding a cost up to it
costs nothing measurable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

QUANTUM_BITS = 64
_SCALE = 1 << QUANTUM_BITS

#: One value in quanta; None is +inf.
Quanta: TypeAlias = int | None
#: One value per order of a dataset's grid.
Vec: TypeAlias = tuple[Quanta, ...]
FloatArray: TypeAlias = npt.NDArray[np.float64]


def _up(x: float) -> Quanta:
    if math.isnan(x) or x < 0.0:
        raise ValueError(f"an RDP cost must be >= 0, not {x!r}")
    scaled = math.ldexp(x, QUANTUM_BITS)  # exact: a power-of-two scaling
    return None if math.isinf(scaled) else math.ceil(scaled)


def _down(x: float) -> int:
    scaled = math.ldexp(x, QUANTUM_BITS)
    if not math.isfinite(scaled):
        raise ValueError(f"a capacity must be finite, not {x!r}")
    return math.floor(scaled)


def from_floats_up(values: Iterable[float]) -> Vec:
    """Return the smallest quanta vector not below ``values`` (+inf stays +inf)."""
    return tuple(_up(float(x)) for x in values)


def from_floats_down(values: Iterable[float]) -> Vec:
    """Return the largest quanta vector not above ``values`` (finite values only)."""
    return tuple(_down(float(x)) for x in values)


def zeros(size: int) -> Vec:
    """Return the all-zero vector."""
    return (0,) * size


def add(a: Vec, b: Vec) -> Vec:
    """Return a + b exactly (inf absorbs)."""
    return tuple(None if x is None or y is None else x + y for x, y in zip(a, b, strict=True))


def subtract(a: Vec, b: Vec) -> Vec:
    """Return a - b exactly, for b <= a; an infinite entry of a stays infinite.

    Only used to release what was reserved earlier, so b is part of a's sum. An order whose
    reservation is infinite is dead (never alive again), so leaving it infinite is harmless.
    """
    out: list[Quanta] = []
    for x, y in zip(a, b, strict=True):
        if x is None:
            out.append(None)
            continue
        if y is None or y > x:
            raise ValueError("cannot release more than was reserved")
        out.append(x - y)
    return tuple(out)


def scale(a: Vec, count: int) -> Vec:
    """Return count * a exactly (count >= 0; 0 * inf is 0: nothing was spent)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if count == 0:
        return zeros(len(a))
    return tuple(None if x is None else x * count for x in a)


def at_most(a: Vec, b: Vec) -> tuple[bool, ...]:
    """Return a <= b per order (inf <= inf is False: an unbounded cost never fits)."""
    return tuple(x is not None and (y is None or x <= y) for x, y in zip(a, b, strict=True))


def covered(a: Vec, b: Vec) -> bool:
    """Whether a <= b at every order, +inf included (inf <= inf holds here)."""
    return all(y is None or (x is not None and x <= y) for x, y in zip(a, b, strict=True))


def is_zero(a: Vec) -> bool:
    """Whether nothing at all is spent."""
    return all(x == 0 for x in a)


def exact(value: Quanta) -> Fraction | None:
    """Return the exact rational value of one entry (None for +inf)."""
    return None if value is None else Fraction(value, _SCALE)


def _nearest_and_back(value: int) -> tuple[float, int]:
    """Return the float nearest value / 2^64 and that float times 2^64, exactly, as an int.

    ``int / int`` is correctly rounded; scaling a float by a power of two is exact, and the
    nearest float to an integer multiple of 2^-64 times 2^64 is an integer, so the comparison
    with ``value`` needs no rational arithmetic.
    """
    nearest = value / _SCALE
    return nearest, int(math.ldexp(nearest, QUANTUM_BITS))


def float_up(value: Quanta) -> float:
    """Return the smallest float not below the exact value (+inf for None)."""
    if value is None:
        return math.inf
    try:
        nearest, back = _nearest_and_back(value)
    except OverflowError:  # beyond the float range
        return math.inf
    return nearest if back >= value else math.nextafter(nearest, math.inf)


def float_down(value: int) -> float:
    """Return the largest float not above the exact value."""
    nearest, back = _nearest_and_back(value)
    return nearest if back <= value else math.nextafter(nearest, -math.inf)


def to_floats_up(a: Vec) -> FloatArray:
    """Return each entry as the smallest float not below it (+inf for None)."""
    return np.array([float_up(x) for x in a], dtype=np.float64)


def to_floats_down(a: Vec) -> FloatArray:
    """Return each (finite) entry as the largest float not above it."""
    if any(x is None for x in a):
        raise ValueError("a capacity vector is finite")
    return np.array([float_down(x) for x in a if x is not None], dtype=np.float64)


def to_json(a: Vec) -> list[int | None]:
    """Return the JSON form (a list of integers, null for +inf)."""
    return list(a)


def from_json(values: Sequence[object]) -> Vec:
    """Inverse of :func:`to_json` (integers only: a float would not be exact)."""
    out: list[Quanta] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(v)
        else:
            raise ValueError(f"a quanta vector holds integers or null, not {v!r}")
    return tuple(out)
