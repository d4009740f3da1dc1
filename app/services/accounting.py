"""The one bridge between the service and dp_core.

Converts request schemas into :mod:`dp_core.mechanisms`, computes RDP vectors and epsilons, and
translates dp_core's errors into the service's domain errors (:func:`translated_dp_errors`, the
only place that catches them). Every RDP value the ledger stores is rounded *up* here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import CalibrationFailedError, InvalidInputError, UnsupportedError
from app.models import FloatArray
from dp_core.conversion import rdp_capacity, rdp_to_epsilon
from dp_core.errors import (
    CalibrationError,
    DpCoreError,
    InvalidParameterError,
    UnsupportedMechanismError,
)
from dp_core.mechanisms import SampledGaussianSchedule, mechanism_to_dict
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule

# Default filter grid, uniform weights: measured with scripts/filter_grid.py (12 orders from 1.5
# to 64 beat both denser grids, which pay log(K)/(a-1) more, and sparser ones, which miss optima).
DEFAULT_FILTER_ORDERS: tuple[float, ...] = (
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    16.0,
    32.0,
    64.0,
)

MAX_TOTAL_STEPS = 100_000_000


@contextmanager
def translated_dp_errors() -> Iterator[None]:
    """Re-raise dp_core errors as the service's domain errors (422)."""
    try:
        yield
    except InvalidParameterError as error:
        raise InvalidInputError(str(error), parameter=error.parameter) from error
    except UnsupportedMechanismError as error:
        raise UnsupportedError(str(error)) from error
    except CalibrationError as error:
        raise CalibrationFailedError(str(error)) from error
    except DpCoreError as error:
        raise InvalidInputError(str(error)) from error


@dataclass(frozen=True)
class RunSpec:
    """The accounting-relevant part of a run: DP-SGD with Poisson sampling and a noise schedule."""

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: NoiseSchedule

    def epochs_mechanism(self, first_epoch: int, stop_epoch: int) -> SampledGaussianSchedule:
        """Return the mechanism of epochs [first_epoch, stop_epoch)."""
        return SampledGaussianSchedule(
            self.sample_rate,
            self.schedule,
            self.steps_per_epoch * (stop_epoch - first_epoch),
            self.steps_per_epoch * first_epoch,
        )


def default_steps_per_epoch(sample_rate: float) -> int:
    """Return ceil(1 / sample_rate), the expected number of steps to see every record once."""
    if sample_rate <= 0.0 or 1.0 / sample_rate > MAX_TOTAL_STEPS:
        # Also keeps a subnormal rate from overflowing 1/q to infinity.
        raise InvalidInputError(
            f"sample_rate {sample_rate:g} is too small for the default steps_per_epoch"
            f" (1/sample_rate > {MAX_TOTAL_STEPS}); give steps_per_epoch",
            parameter="sample_rate",
        )
    return max(1, math.ceil(1.0 / sample_rate))


def make_run_spec(
    *,
    sample_rate: float,
    steps_per_epoch: int | None,
    epochs: int,
    schedule: str,
    noise_multiplier: float,
    decay_rate: float,
) -> RunSpec:
    """Validate a run's mechanism with dp_core (the whole plan, so no later epoch can fail)."""
    steps = default_steps_per_epoch(sample_rate) if steps_per_epoch is None else steps_per_epoch
    if steps * epochs > MAX_TOTAL_STEPS:
        raise InvalidInputError(
            f"a run may plan at most {MAX_TOTAL_STEPS} steps (steps_per_epoch * epochs)",
            parameter="epochs",
        )
    with translated_dp_errors():
        noise = NoiseSchedule(schedule, noise_multiplier, decay_rate)
        spec = RunSpec(sample_rate, steps, epochs, noise)
        spec.epochs_mechanism(0, epochs)
    return spec


def mechanism_json(mechanism: SampledGaussianSchedule) -> dict[str, Any]:
    """Return the versioned JSON description stored with a ledger entry."""
    return mechanism_to_dict(mechanism)


def round_up(values: FloatArray) -> FloatArray:
    """Return the next float above each value (+inf stays +inf): charges never round down."""
    return np.nextafter(np.asarray(values, dtype=np.float64), np.inf)


def add_up(total: FloatArray, values: FloatArray) -> FloatArray:
    """Return total + values, rounded up."""
    return round_up(np.asarray(total, dtype=np.float64) + values)


def subtract_up(total: FloatArray, values: FloatArray) -> FloatArray:
    """Return max(total - values, 0) rounded up; +inf stays +inf (its order is dead anyway)."""
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isinf(total), np.inf, np.asarray(total) - values)
    return round_up(np.maximum(diff, 0.0))


def _mechanism_rdp(mechanism: SampledGaussianSchedule, orders: FloatArray) -> FloatArray:
    with translated_dp_errors():
        return np.asarray(compute_rdp(mechanism, orders), dtype=np.float64)


@functools.lru_cache(maxsize=4096)
def _epoch_rdp_cached(spec: RunSpec, epoch: int, orders: tuple[float, ...]) -> FloatArray:
    rdp = round_up(_mechanism_rdp(spec.epochs_mechanism(epoch, epoch + 1), np.array(orders)))
    rdp.setflags(write=False)
    return rdp


def epoch_rdp(spec: RunSpec, epoch: int, orders: Sequence[float]) -> FloatArray:
    """Return the RDP charge of one epoch (rounded up; cached, so a run's charges are stable)."""
    # Under a constant schedule every epoch costs the same: share one cache entry.
    key_epoch = 0 if spec.schedule.is_constant else epoch
    return _epoch_rdp_cached(spec, key_epoch, tuple(float(a) for a in orders))


def epochs_rdp(
    spec: RunSpec, first_epoch: int, stop_epoch: int, orders: Sequence[float]
) -> FloatArray:
    """Return the sum, rounded up, of the epoch charges of epochs [first_epoch, stop_epoch)."""
    total = np.zeros(len(orders))
    for epoch in range(first_epoch, stop_epoch):
        total = add_up(total, epoch_rdp(spec, epoch, orders))
    return total


def filter_capacity(
    *, orders: Sequence[float], weights: Sequence[float], target_epsilon: float, target_delta: float
) -> FloatArray:
    """Return B(a) at delta_a = w_a * delta_G, rounded down (toward more privacy)."""
    deltas = np.asarray(weights, dtype=np.float64) * target_delta
    with translated_dp_errors():
        capacity = rdp_capacity(orders=list(orders), epsilon=target_epsilon, deltas=deltas)
    return np.nextafter(np.asarray(capacity, dtype=np.float64), -np.inf)


def epsilon_of_rdp(*, orders: Sequence[float], rdp: FloatArray, delta: float) -> float | None:
    """Return the plain (non-adaptive) epsilon of an RDP curve, or None when it is unbounded."""
    with translated_dp_errors():
        result = rdp_to_epsilon(orders=list(orders), rdp=rdp, delta=delta, warn=False)
    return result.epsilon if math.isfinite(result.epsilon) else None
