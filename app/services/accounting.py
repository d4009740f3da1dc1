"""The one bridge between the service and dp_core.

Converts request schemas into the ledger's plans (:mod:`app.ledger.plans`), computes their costs
and epsilons, serves the stateless accountant endpoints, and translates dp_core's errors into
the service's domain errors (:func:`translated_dp_errors`, the only place that catches them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import numpy as np
from pydantic import TypeAdapter

import dp_core
from app.errors import CalibrationFailedError, InvalidInputError, UnsupportedError
from app.ledger.costs import UnitCosts
from app.ledger.plans import (
    DEFAULT_MAX_NOISE_LEVELS,
    ChargeSpec,
    FedAvgSpec,
    PateSpec,
    ReleaseSpec,
    RunSpec,
    TuningSpec,
    unit_costs,
)
from app.ledger.quanta import Vec
from app.ledger.rounding import capacity_down
from app.schemas import (
    AnyMechanism,
    DpFedAvgMechanism,
    DpSgdMechanism,
    EpsilonRead,
    EpsilonRequest,
    GaussianRelease,
    LaplaceRelease,
    MaxStepsRead,
    MaxStepsRequest,
    MechanismSpec,
    NoiseMultiplierRead,
    NoiseMultiplierRequest,
    PateMechanism,
    TuningMechanism,
)
from dp_core.calibration import max_steps_within_budget
from dp_core.conversion import rdp_capacity
from dp_core.epochs import steps_per_epoch
from dp_core.errors import (
    CalibrationError,
    DpCoreError,
    InvalidParameterError,
    UnsupportedMechanismError,
)
from dp_core.federated import DpFedAvgRounds
from dp_core.group import group_exponent
from dp_core.mechanisms import mechanism_to_dict
from dp_core.pate import mechanism_for_gaussian_release, mechanism_for_laplace_release
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


def make_pate_spec(
    *, aggregator: str, noise_multiplier: float, queries: int, batch_size: int | None
) -> PateSpec:
    """Validate a PATE job with dp_core."""
    spec = PateSpec(aggregator, noise_multiplier, queries, batch_size or queries)
    with translated_dp_errors():
        spec.mechanism(0, spec.units)
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
    """Return the steps of one epoch at ``sample_rate`` (:func:`dp_core.epochs.steps_per_epoch`)."""
    try:
        return steps_per_epoch(sample_rate)
    except InvalidParameterError as error:
        raise InvalidInputError(
            f"{error}; give steps_per_epoch", parameter="sample_rate"
        ) from error


def make_run_spec(
    *,
    sample_rate: float,
    steps_per_epoch: int | None,
    epochs: int,
    schedule: str,
    noise_multiplier: float,
    decay_rate: float,
    max_records_per_individual: int = 1,
) -> RunSpec:
    """Validate a run's mechanism with dp_core (the whole plan, so no later epoch can fail).

    ``max_records_per_individual`` K > 1 makes every epoch cost its group RDP (see RunSpec).
    """
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
        group_exponent(max_records_per_individual)  # validates K >= 1
        spec = RunSpec(sample_rate, steps, epochs, noise, max_records_per_individual)
        spec.mechanism(0, epochs)
    return spec


def mechanism_json(mechanism: object) -> dict[str, Any]:
    """Return the versioned JSON description stored with a ledger entry."""
    return mechanism_to_dict(mechanism)


def plan_costs(spec: ChargeSpec, orders: Sequence[float], *, max_noise_levels: int) -> UnitCosts:
    """Return the per-unit costs of a plan at a dataset's orders (rounded toward privacy)."""
    with translated_dp_errors():
        return unit_costs(spec, tuple(float(a) for a in orders), max_noise_levels=max_noise_levels)


def filter_capacity(
    *, orders: Sequence[float], weights: Sequence[float], target_epsilon: float, target_delta: float
) -> Vec:
    """Return B(a) at delta_a = w_a * delta_G, rounded down (toward more privacy) into quanta."""
    deltas = np.asarray(weights, dtype=np.float64) * target_delta
    with translated_dp_errors():
        capacity = rdp_capacity(orders=list(orders), epsilon=target_epsilon, deltas=deltas)
    return capacity_down(np.asarray(capacity, dtype=np.float64))


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
        max_records_per_individual=mechanism.max_records_per_individual,
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


def _tuning_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, TuningMechanism)
    base = _dp_sgd_spec(mechanism.base)
    assert isinstance(base, RunSpec)
    spec = TuningSpec(
        base=base,
        candidates=mechanism.candidates,
        distribution=mechanism.distribution,
        eta=mechanism.eta,
        gamma=mechanism.gamma,
        mu=mechanism.mu,
    )
    with translated_dp_errors():
        spec.mechanism(0, 1)
    return spec


def _fedavg_spec(mechanism: MechanismRequest) -> ChargeSpec:
    assert isinstance(mechanism, DpFedAvgMechanism)
    with translated_dp_errors():
        record = DpFedAvgRounds(
            users=mechanism.users,
            sampling=mechanism.sampling,
            noise_multiplier=mechanism.noise_multiplier,
            clip=mechanism.clip,
            rounds=mechanism.rounds,
            sample_rate=mechanism.sample_rate,
            clients_per_round=mechanism.clients_per_round,
            quantization_step=mechanism.quantization_step,
            dimension=mechanism.dimension,
        )
    return FedAvgSpec(record)


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
    "tuning": _tuning_spec,
    "dp_fedavg": _fedavg_spec,
}


def stored_mechanism(mechanism: MechanismRequest, spec: ChargeSpec | None) -> dict[str, Any]:
    """Return the mechanism as stored with the run: the request with its defaults filled in."""
    stored = mechanism.model_dump(mode="json", exclude_none=False)
    if isinstance(spec, RunSpec):
        stored["steps_per_epoch"] = spec.steps_per_epoch
    elif isinstance(spec, TuningSpec):
        stored["base"]["steps_per_epoch"] = spec.base.steps_per_epoch
    elif isinstance(spec, PateSpec):
        stored["batch_size"] = spec.batch_size
    return stored


def parse_mechanism(stored: dict[str, Any]) -> MechanismRequest:
    """Inverse of :func:`stored_mechanism` (the stored JSON is re-validated)."""
    return _MECHANISM_ADAPTER.validate_python(stored)


_MECHANISM_ADAPTER: TypeAdapter[MechanismRequest] = TypeAdapter(MechanismSpec)


# --- the stateless accountant (``/v1/accountant/*``, same answers as the CLI) ----------------


def check_noise_levels(
    *, schedule: str, decay_rate: float, steps: int, limit: int, what: str
) -> None:
    """Refuse a decaying schedule over more steps than ``limit`` (bounded work per request)."""
    constant = schedule == "constant" or decay_rate == 0.0
    if not constant and steps > limit:
        raise InvalidInputError(
            f"{what} with a decaying noise schedule may cover at most {limit} steps"
            f" (setting DPLEDGER_MAX_NOISE_LEVELS); {steps} requested",
            parameter="steps",
        )


def compute_epsilon(
    body: EpsilonRequest, *, max_noise_levels: int = DEFAULT_MAX_NOISE_LEVELS
) -> EpsilonRead:
    """Return the epsilon of ``steps`` DP-SGD steps (dp_core's facade)."""
    check_noise_levels(
        schedule=body.schedule,
        decay_rate=body.decay_rate,
        steps=body.steps,
        limit=max_noise_levels,
        what="an epsilon",
    )
    with translated_dp_errors():
        result = dp_core.compute_epsilon(
            sample_rate=body.sample_rate,
            noise_multiplier=body.noise_multiplier,
            steps=body.steps,
            delta=body.delta,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
            warn=False,
        )
    return EpsilonRead(
        epsilon=result.epsilon,
        epsilon_rdp=result.epsilon,
        epsilon_pld=_bounded_pld(body),
        epsilon_grid=result.epsilon_grid,
        order=result.order,
        delta=body.delta,
        steps=body.steps,
    )


#: The most FFT points the accountant endpoint's PLD may use (about 0.5 s of CPU on 2 cores).
PLD_MAX_FFT_POINTS = 1 << 21


def _bounded_pld(body: EpsilonRequest) -> float | None:
    """PLD epsilon on dp_core's default grid (as `dpledger epsilon`), or None beyond the bound."""
    try:
        result = dp_core.compute_epsilon_pld(
            sample_rate=body.sample_rate,
            noise_multiplier=body.noise_multiplier,
            steps=body.steps,
            delta=body.delta,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
            max_fft_points=PLD_MAX_FFT_POINTS,
        )
    except InvalidParameterError as error:
        raise InvalidInputError(str(error), parameter=error.parameter) from error
    except DpCoreError:  # beyond the work bound: the RDP epsilon stands alone
        return None
    return result.epsilon if math.isfinite(result.epsilon) else None


def calibrate_noise_multiplier(
    body: NoiseMultiplierRequest, *, max_noise_levels: int = DEFAULT_MAX_NOISE_LEVELS
) -> NoiseMultiplierRead:
    """Return the smallest noise multiplier meeting the target (never overshooting it)."""
    check_noise_levels(
        schedule=body.schedule,
        decay_rate=body.decay_rate,
        steps=body.steps,
        limit=max_noise_levels // 2,
        what="a calibration",
    )
    with translated_dp_errors():
        result = dp_core.calibrate_noise_multiplier(
            target_epsilon=body.target_epsilon,
            delta=body.delta,
            sample_rate=body.sample_rate,
            steps=body.steps,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
            warn=False,
        )
    return NoiseMultiplierRead(noise_multiplier=result.noise_multiplier, epsilon=result.epsilon)


def max_steps(
    body: MaxStepsRequest, *, max_noise_levels: int = DEFAULT_MAX_NOISE_LEVELS
) -> MaxStepsRead:
    """Return the most steps whose epsilon stays within the target (422 when not even one fits).

    With a decaying schedule the search stops at half the noise-level limit (the answer is
    then "at least that many"); constant noise searches up to ``limit``.
    """
    constant = body.schedule == "constant" or body.decay_rate == 0.0
    limit = body.limit if constant else min(body.limit, max_noise_levels // 2)
    with translated_dp_errors():
        result = max_steps_within_budget(
            target_epsilon=body.target_epsilon,
            delta=body.delta,
            sample_rate=body.sample_rate,
            noise_multiplier=body.noise_multiplier,
            schedule=body.schedule,
            decay_rate=body.decay_rate,
            limit=limit,
            warn=False,
        )
    if result.steps == 0:
        raise InvalidInputError(
            f"not even one step fits target_epsilon {body.target_epsilon:g} at this noise"
            f" (one step costs epsilon {result.epsilon:.6g}); raise the noise multiplier",
            parameter="target_epsilon",
        )
    return MaxStepsRead(steps=result.steps, epsilon=result.epsilon, delta=body.delta)
