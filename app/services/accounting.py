"""The one bridge between the service and dp_core.

Converts request schemas into :mod:`dp_core.mechanisms`, computes RDP vectors and epsilons, and
translates dp_core's errors into the service's domain errors (:func:`translated_dp_errors`, the
only place that catches them). Every RDP value the ledger stores is rounded *up* here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from pydantic import TypeAdapter

from app.errors import CalibrationFailedError, InvalidInputError, UnsupportedError
from app.models import FloatArray
from app.schemas import (
    AnyMechanism,
    DpSgdMechanism,
    GaussianRelease,
    LaplaceRelease,
    MechanismSpec,
    PateMechanism,
)
from dp_core.conversion import rdp_capacity, rdp_to_epsilon
from dp_core.errors import (
    CalibrationError,
    DpCoreError,
    InvalidParameterError,
    UnsupportedMechanismError,
)
from dp_core.mechanisms import (
    Composed,
    Gaussian,
    Laplace,
    SampledGaussianSchedule,
    mechanism_to_dict,
)
from dp_core.pate import (
    PateMechanism as PateQueries,
)
from dp_core.pate import (
    mechanism_for_gaussian_release,
    mechanism_for_laplace_release,
    pate_mechanism,
)
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

MechanismRequest: TypeAlias = AnyMechanism


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
            sample_rate=self.sample_rate,
            schedule=self.schedule,
            steps=self.steps_per_epoch * (stop_epoch - first_epoch),
            start_step=self.steps_per_epoch * first_epoch,
        )

    @property
    def uniform_units(self) -> bool:
        """Whether every epoch costs the same (a constant schedule)."""
        return self.schedule.is_constant


@dataclass(frozen=True)
class PateSpec:
    """PATE: ``queries`` noisy-max answers, charged in batches of ``batch_size`` (the last smaller)."""

    aggregator: str
    noise_multiplier: float
    queries: int
    batch_size: int

    @property
    def epochs(self) -> int:
        """The number of batches (units of charge)."""
        return -(-self.queries // self.batch_size)

    @property
    def uniform_units(self) -> bool:
        """Whether every batch has the same number of queries."""
        return self.queries % self.batch_size == 0

    def epochs_mechanism(self, first_batch: int, stop_batch: int) -> PateQueries:
        """Return the record of the queries of batches [first_batch, stop_batch)."""
        stop = min(stop_batch * self.batch_size, self.queries)
        return pate_mechanism(
            self.aggregator,
            noise_multiplier=self.noise_multiplier,
            queries=max(0, stop - first_batch * self.batch_size),
        )


@dataclass(frozen=True)
class ReleaseSpec:
    """One noisy release of a statistic: a single unit of charge."""

    mechanism: Gaussian | Laplace
    epochs: int = 1
    uniform_units: bool = True

    def epochs_mechanism(self, first: int, stop: int) -> Gaussian | Laplace | Composed:
        """Return the release for [0, 1), nothing for an empty range."""
        return self.mechanism if first < stop else Composed(())


ChargeSpec: TypeAlias = RunSpec | PateSpec | ReleaseSpec


def make_pate_spec(
    *, aggregator: str, noise_multiplier: float, queries: int, batch_size: int | None
) -> PateSpec:
    """Validate a PATE job with dp_core."""
    spec = PateSpec(aggregator, noise_multiplier, queries, batch_size or queries)
    with translated_dp_errors():
        spec.epochs_mechanism(0, spec.epochs)
    return spec


def make_release_spec(kind: str, *, sensitivity: float, noise: float) -> ReleaseSpec:
    """Validate a Laplace (noise = scale) or Gaussian (noise = std) release with dp_core."""
    with translated_dp_errors():
        if kind == "laplace_release":
            return ReleaseSpec(
                mechanism_for_laplace_release(sensitivity=sensitivity, noise_scale=noise)
            )
        return ReleaseSpec(mechanism_for_gaussian_release(sensitivity=sensitivity, noise_std=noise))


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
        noise = NoiseSchedule(
            kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate
        )
        spec = RunSpec(sample_rate, steps, epochs, noise)
        spec.epochs_mechanism(0, epochs)
    return spec


def mechanism_json(mechanism: object) -> dict[str, Any]:
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


def _mechanism_rdp(mechanism: object, orders: FloatArray) -> FloatArray:
    with translated_dp_errors():
        return np.asarray(compute_rdp(mechanism, orders), dtype=np.float64)


@functools.lru_cache(maxsize=4096)
def _epoch_rdp_cached(spec: ChargeSpec, epoch: int, orders: tuple[float, ...]) -> FloatArray:
    rdp = round_up(_mechanism_rdp(spec.epochs_mechanism(epoch, epoch + 1), np.array(orders)))
    rdp.setflags(write=False)
    return rdp


def epoch_rdp(spec: ChargeSpec, epoch: int, orders: Sequence[float]) -> FloatArray:
    """Return the RDP charge of one epoch (rounded up; cached, so a run's charges are stable)."""
    # When every unit costs the same (e.g. a constant schedule), share one cache entry.
    key_epoch = 0 if spec.uniform_units else epoch
    return _epoch_rdp_cached(spec, key_epoch, tuple(float(a) for a in orders))


def epochs_rdp(
    spec: ChargeSpec, first_epoch: int, stop_epoch: int, orders: Sequence[float]
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


def charge_spec(mechanism: MechanismRequest) -> ChargeSpec:
    """Return the accounting view of a requested RDP mechanism (validated with dp_core)."""
    return _CHARGE_SPECS[mechanism.kind](mechanism)


def _dp_sgd_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, DpSgdMechanism)
    return make_run_spec(
        sample_rate=mechanism.sample_rate,
        steps_per_epoch=mechanism.steps_per_epoch,
        epochs=mechanism.epochs,
        schedule=mechanism.noise.schedule,
        noise_multiplier=mechanism.noise.noise_multiplier,
        decay_rate=mechanism.noise.decay_rate,
    )


def _pate_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, PateMechanism)
    return make_pate_spec(
        aggregator=mechanism.aggregator,
        noise_multiplier=mechanism.noise_multiplier,
        queries=mechanism.queries,
        batch_size=mechanism.batch_size,
    )


def _laplace_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, LaplaceRelease)
    return make_release_spec(
        "laplace_release", sensitivity=mechanism.sensitivity, noise=mechanism.noise_scale
    )


def _gaussian_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, GaussianRelease)
    return make_release_spec(
        "gaussian_release", sensitivity=mechanism.sensitivity, noise=mechanism.noise_std
    )


def _no_rdp(mechanism: MechanismRequest) -> ChargeSpec:
    raise InvalidInputError(
        f"{mechanism.kind} has no RDP curve; it is charged to the approximate-DP sub-budget",
        parameter="mechanism",
    )


_CHARGE_SPECS: dict[str, Callable[[MechanismRequest], ChargeSpec]] = {
    "dp_sgd": _dp_sgd_spec,
    "pate": _pate_spec,
    "laplace_release": _laplace_spec,
    "gaussian_release": _gaussian_spec,
    "approx_dp_release": _no_rdp,
}


def stored_mechanism(mechanism: MechanismRequest, spec: ChargeSpec | None) -> dict[str, Any]:
    """Return the mechanism as stored with the run: the request with its defaults filled in."""
    stored = mechanism.model_dump(mode="json")
    if isinstance(spec, RunSpec):
        stored["steps_per_epoch"] = spec.steps_per_epoch
    elif isinstance(spec, PateSpec):
        stored["batch_size"] = spec.batch_size
    return stored


def parse_mechanism(stored: dict[str, Any]) -> MechanismRequest:
    """Inverse of :func:`stored_mechanism` (the stored JSON is re-validated)."""
    return _MECHANISM_ADAPTER.validate_python(stored)


_MECHANISM_ADAPTER: TypeAdapter[MechanismRequest] = TypeAdapter(MechanismSpec)
