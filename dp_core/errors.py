"""The one error hierarchy of dp_core.

Every error carries a stable snake_case ``code`` so the service and the CLI can translate it in one
place (HTTP 422/409, exit code 2) without parsing messages.
"""

from __future__ import annotations

import math

__all__ = [
    "CalibrationError",
    "DpCoreError",
    "InvalidParameterError",
    "UnsupportedMechanismError",
]


class DpCoreError(ValueError):
    """Base class of every error raised by dp_core."""

    code: str = "dp_core_error"


class InvalidParameterError(DpCoreError):
    """A parameter is outside its domain (NaN, negative noise, q outside [0, 1], ...).

    Attributes:
        parameter: Name of the offending parameter, as the caller spelled it.
        value: The offending value.
    """

    code = "invalid_parameter"

    def __init__(self, parameter: str, value: object, requirement: str) -> None:
        self.parameter = parameter
        self.value = value
        self.requirement = requirement
        super().__init__(f"invalid {parameter}={_show(value)}: {requirement}")


class UnsupportedMechanismError(DpCoreError):
    """The accountant has no RDP bound for this mechanism (e.g. a subsampled Laplace)."""

    code = "unsupported_mechanism"


class CalibrationError(DpCoreError):
    """No parameter value within the search range meets the target."""

    code = "calibration_failed"


def _show(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)
