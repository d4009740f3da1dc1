"""How many DP-SGD steps make one epoch: the one rule shared by the trainer and the ledger."""

from __future__ import annotations

import math

from dp_core.errors import InvalidParameterError

#: 1/q may sit this close (relative) to an integer n and still mean n: q = 1/n in floating point.
_INTEGER_TOLERANCE = 1e-9
#: The largest steps per epoch the rule returns (1/q beyond it is refused, not overflowed).
MAX_STEPS_PER_EPOCH = 100_000_000


def steps_per_epoch(sample_rate: float) -> int:
    """Return the steps in one epoch at Poisson rate q: 1/q, rounded up to an integer.

    With q = B/N (expected batch B of N records) this is ceil(N/B), the steps that see each record
    once in expectation (Abadi et al. 2016, Sec. 3.1: an epoch is N/B lots). When q is the float
    nearest 1/n, 1/q can come out a hair above n (q = 1/99940 gives 99940.00000000001), so a
    1/q within a relative 1e-9 of an integer is taken as that integer.

    Raises:
        InvalidParameterError: unless 0 < q <= 1 and 1/q <= MAX_STEPS_PER_EPOCH.
    """
    if not (isinstance(sample_rate, float | int) and 0.0 < sample_rate <= 1.0):
        raise InvalidParameterError("sample_rate", sample_rate, "must be in (0, 1]")
    inverse = 1.0 / sample_rate
    if not inverse <= MAX_STEPS_PER_EPOCH:  # also catches a subnormal q overflowing 1/q
        raise InvalidParameterError(
            "sample_rate",
            sample_rate,
            f"is too small: one epoch would take more than {MAX_STEPS_PER_EPOCH} steps",
        )
    nearest = round(inverse)
    if abs(inverse - nearest) <= _INTEGER_TOLERANCE * nearest:
        return max(1, nearest)
    return max(1, math.ceil(inverse))
