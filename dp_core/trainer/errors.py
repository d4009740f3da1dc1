"""Errors raised by the trainer; they extend dp_core's one hierarchy (:mod:`dp_core.errors`)."""

from __future__ import annotations

from dp_core.errors import DpCoreError

__all__ = ["LedgerError", "TrainerError", "UnsupportedModelError"]


class TrainerError(DpCoreError):
    """Base class of the trainer's errors."""

    code = "trainer_error"


class UnsupportedModelError(TrainerError):
    """The model has a layer for which per-example gradients do not exist (e.g. BatchNorm)."""

    code = "unsupported_model"


class LedgerError(TrainerError):
    """The ledger service answered something other than a charge or a budget refusal.

    Attributes:
        status: The HTTP status, or ``None`` when the service could not be reached.
        service_code: The ``code`` field of the service's JSON error body, when there is one.
    """

    code = "ledger_error"

    def __init__(self, message: str, *, status: int | None = None, service_code: str | None = None):
        """Create the error with a one-line message and what the service said."""
        self.status = status
        self.service_code = service_code
        super().__init__(message)
