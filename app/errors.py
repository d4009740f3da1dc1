"""The service's domain errors: each has a stable snake_case ``code`` and one HTTP status.

Routes raise these (never ``HTTPException``); :mod:`app.main` turns every one into
``{"code": ..., "message": ...}`` in one handler. dp_core's errors are translated into these in
:mod:`app.services.accounting` only.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

__all__ = [
    "AppError",
    "AuthenticationError",
    "BudgetExceededError",
    "CalibrationFailedError",
    "ConflictError",
    "DatasetExistsError",
    "EpochBeyondPlanError",
    "EpochOutOfOrderError",
    "InvalidInputError",
    "NeighbouringRelationMismatchError",
    "NotFoundError",
    "PermissionDeniedError",
    "RunNotActiveError",
    "UnitMismatchError",
    "UnsupportedError",
]


class AppError(Exception):
    """Base of every domain error; ``details`` are extra JSON fields of the error body."""

    code: ClassVar[str] = "error"
    status_code: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        """Return the JSON error body; a non-finite float detail becomes null (JSON has no inf)."""
        details = {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in self.details.items()
        }
        return {"code": self.code, "message": self.message, **details}


class InvalidInputError(AppError):
    """A request is well-formed JSON but a value is outside its domain."""

    code = "invalid_input"
    status_code = 422


class UnsupportedError(AppError):
    """The accountant has no bound for the requested mechanism or calibration target."""

    code = "unsupported"
    status_code = 422


class AuthenticationError(AppError):
    """No bearer token, or an unknown one."""

    code = "unauthorized"
    status_code = 401


class PermissionDeniedError(AppError):
    """The token is valid but its role or dataset scope does not allow this."""

    code = "forbidden"
    status_code = 403


class NotFoundError(AppError):
    """An unknown dataset, run or route."""

    code = "not_found"
    status_code = 404


class IdempotencyKeyReusedError(InvalidInputError):
    """An ``Idempotency-Key`` already used by this token with a different request body."""

    code = "idempotency_key_reused"


class RateLimitedError(AppError):
    """Too many requests of this kind from one token; retry after ``retry_after_s`` seconds."""

    code = "rate_limited"
    status_code = 429


class ConflictError(AppError):
    """The request conflicts with the current state."""

    code = "conflict"
    status_code = 409


class DatasetExistsError(ConflictError):
    """A dataset with this name already exists."""

    code = "dataset_exists"


class BudgetExceededError(ConflictError):
    """Admitting the run would leave no order of the filter within its capacity."""

    code = "budget_exceeded"


class EpochOutOfOrderError(ConflictError):
    """An epoch was requested before the previous one was charged."""

    code = "epoch_out_of_order"


class EpochBeyondPlanError(ConflictError):
    """An epoch past the number of epochs the run reserved."""

    code = "epoch_beyond_plan"


class RunNotActiveError(ConflictError):
    """The run is finished or was refused, so it cannot be charged."""

    code = "run_not_active"


class PrivacyUnitMismatchError(ConflictError):
    """The run's mechanism protects another unit (user or example) than the dataset declares."""

    code = "privacy_unit_mismatch"


class NeighbouringRelationMismatchError(ConflictError):
    """The run's accounting uses another neighbouring relation than the dataset's runs."""

    code = "neighbouring_relation_mismatch"


class UnitMismatchError(ConflictError):
    """A charge sent to the route of another unit (a PATE batch to a DP-SGD run, or back)."""

    code = "unit_mismatch"


class CalibrationFailedError(InvalidInputError):
    """No noise multiplier within dp_core's search range meets the target."""

    code = "calibration_failed"


# --- hardening: limits, availability, unexpected failures ------------------------------------


class PayloadTooLargeError(AppError):
    """The request body is larger than ``DPLEDGER_MAX_BODY_BYTES`` (refused before parsing)."""

    code = "payload_too_large"
    status_code = 413


class CrossSiteRequestError(PermissionDeniedError):
    """A state-changing dashboard form was posted from another site (Origin/Referer check)."""

    code = "cross_site_request"


class DatabaseUnavailableError(AppError):
    """The database cannot be reached, or the connection was lost (answered with Retry-After)."""

    code = "database_unavailable"
    status_code = 503


class InternalError(AppError):
    """An unexpected failure; logged with the request id, never shown to the client."""

    code = "internal_error"
    status_code = 500


__all__ += [
    "CrossSiteRequestError",
    "DatabaseUnavailableError",
    "InternalError",
    "PayloadTooLargeError",
]

__all__ += ["PrivacyUnitMismatchError"]

__all__ += ["IdempotencyKeyReusedError", "RateLimitedError"]
