"""Calibration that never overshoots the target: noise for a budget, steps within a budget.

Epsilon falls as every sigma grows (RDP of the sampled Gaussian is decreasing in sigma at every
order, MTZ 2019) and rises with each step (RDP adds up, Mironov 2017, Prop. 1), so both searches
are bisections on a monotone function; they round toward more privacy (more noise, fewer steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dp_core.accountant import EpsilonReport, RdpAccountant
from dp_core.conversion import epsilon_at_orders
from dp_core.errors import CalibrationError
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import FloatArray
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, positive_float

__all__ = [
    "NoiseCalibration",
    "StepsCalibration",
    "calibrate_noise_multiplier",
    "epsilon_of_schedule",
    "max_steps_within_budget",
]

_SIGMA_RANGE = (1e-3, 1e5)
_STEPS_LIMIT = 10**9


@dataclass(frozen=True)
class NoiseCalibration:
    """The noise multiplier (s0 for a decaying schedule) and the epsilon it gives."""

    noise_multiplier: float
    epsilon: float
    order: float


@dataclass(frozen=True)
class StepsCalibration:
    """The largest number of steps within the budget and the epsilon it spends."""

    steps: int
    epsilon: float
    order: float
    capped: bool


def epsilon_of_schedule(
    *,
    sample_rate: float,
    schedule: NoiseSchedule,
    steps: int,
    delta: float,
    orders: object = None,
    warn: bool = True,
) -> EpsilonReport:
    """Epsilon of ``steps`` DP-SGD steps (Poisson-sampled Gaussian following ``schedule``)."""
    accountant = RdpAccountant(orders)
    accountant.compose(
        SampledGaussianSchedule(sample_rate=sample_rate, schedule=schedule, steps=steps)
    )
    return accountant.get_epsilon(delta, warn=warn)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    schedule: str = "constant",
    decay_rate: float = 0.0,
    orders: object = None,
    rtol: float = 1e-3,
    warn: bool = True,
) -> NoiseCalibration:
    """Smallest noise multiplier (within ``rtol`` relative) whose epsilon is <= ``target_epsilon``.

    For a decaying schedule the calibrated value is s0; every sigma_t scales with it. The returned
    value always meets the target: the search keeps the sufficient end of its bracket.

    Raises:
        CalibrationError: if no sigma in [1e-3, 1e5] meets the target, or every sigma does
            (nothing to calibrate: zero steps or sample rate 0).
    """
    target = positive_float("target_epsilon", target_epsilon)
    delta = open_probability("delta", delta)
    NoiseSchedule(
        kind=schedule, noise_multiplier=1.0, decay_rate=decay_rate
    )  # validate the schedule before searching

    def report(sigma: float, warn: bool = False) -> EpsilonReport:
        return epsilon_of_schedule(
            sample_rate=sample_rate,
            schedule=NoiseSchedule(kind=schedule, noise_multiplier=sigma, decay_rate=decay_rate),
            steps=steps,
            delta=delta,
            orders=orders,
            warn=warn,
        )

    def sufficient(sigma: float) -> bool:
        return report(sigma).epsilon <= target

    lo, hi = _bracket_sigma(sufficient)
    best = _bisect_log(sufficient, lo, hi, rtol)
    final = report(best, warn=warn)
    return NoiseCalibration(best, final.epsilon, final.order)


def _bracket_sigma(sufficient: Callable[[float], bool]) -> tuple[float, float]:
    """(insufficient, sufficient) sigmas, growing by factors of 4 from 1 within _SIGMA_RANGE."""
    floor, ceiling = _SIGMA_RANGE
    sigma = 1.0
    if sufficient(sigma):
        while sigma > floor:
            lower = max(sigma / 4.0, floor)
            if not sufficient(lower):
                return lower, sigma
            sigma = lower
        raise CalibrationError(
            f"noise_multiplier={floor:g} already meets the target: nothing to calibrate"
        )
    while sigma < ceiling:
        upper = min(sigma * 4.0, ceiling)
        if sufficient(upper):
            return sigma, upper
        sigma = upper
    raise CalibrationError(f"even noise_multiplier={ceiling:g} gives epsilon above the target")


def _bisect_log(sufficient: Callable[[float], bool], lo: float, hi: float, rtol: float) -> float:
    """Bisection in log space; ``hi`` is sufficient and ``lo`` is not; returns a sufficient value."""
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if sufficient(mid):
            hi = mid
        else:
            lo = mid
    return hi


def max_steps_within_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    schedule: str = "constant",
    decay_rate: float = 0.0,
    orders: object = None,
    limit: int = _STEPS_LIMIT,
    warn: bool = True,
) -> StepsCalibration:
    """Largest number of steps T whose epsilon is <= ``target_epsilon`` (0 if even one step is over).

    Raises:
        InvalidParameterError: for invalid parameters, or a decay that drives sigma to 0 before the
            budget is spent.
    """
    target = positive_float("target_epsilon", target_epsilon)
    delta = open_probability("delta", delta)
    limit = non_negative_int("limit", limit)
    noise = NoiseSchedule(kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate)

    def report(steps: int, warn: bool = False) -> EpsilonReport:
        return epsilon_of_schedule(
            sample_rate=sample_rate,
            schedule=noise,
            steps=steps,
            delta=delta,
            orders=orders,
            warn=warn,
        )

    def fits(steps: int) -> bool:
        return steps == 0 or report(steps).epsilon <= target

    start = (
        _constant_grid_guess(noise, sample_rate, target, delta, orders) if noise.is_constant else 0
    )
    lo = min(start, limit)
    if not fits(lo):
        lo = 0
    # Gallop up from the last feasible count, then bisect between feasible lo and infeasible hi.
    step = max(1, lo // 64)
    hi = lo + step
    while hi <= limit and fits(hi):
        lo, step = hi, 2 * step
        hi = lo + step
    if hi > limit:
        if fits(limit):
            final = report(limit, warn=warn) if limit else None
            return StepsCalibration(
                limit, final.epsilon if final else 0.0, final.order if final else math.nan, True
            )
        hi = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0:
        return StepsCalibration(0, 0.0, math.nan, False)
    final = report(lo, warn=warn)
    return StepsCalibration(lo, final.epsilon, final.order, False)


def _constant_grid_guess(
    noise: NoiseSchedule, sample_rate: float, target: float, delta: float, orders: object
) -> int:
    """Closed form on the grid for constant noise: T r_a + c_a <= target at the best order a."""
    from dp_core.rdp.orders import DEFAULT_ORDERS

    grid: FloatArray = np.asarray(DEFAULT_ORDERS if orders is None else orders, dtype=np.float64)
    per_step = compute_rdp(
        SampledGaussianSchedule(sample_rate=sample_rate, schedule=noise, steps=1), grid
    )
    offsets = epsilon_at_orders(grid, np.zeros(grid.size), math.log(delta))
    with np.errstate(divide="ignore", invalid="ignore"):
        counts = np.where(per_step > 0, np.floor((target - offsets) / per_step), np.inf)
    best = float(np.max(counts))
    return int(min(max(best, 0.0), float(_STEPS_LIMIT)))
