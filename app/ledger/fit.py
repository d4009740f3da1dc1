"""What would fit when the filter refuses a run: fewer epochs, or more noise.

Both answers are checked against the filter itself (:func:`app.ledger.transitions.open_run` on
the state the refusal saw), so they never overshoot: the run shortened to ``epochs`` units, or
re-planned at ``noise_multiplier``, would have been admitted. The noise search works on constant
schedules only (bounded work: one per-step evaluation per trial), to three significant digits,
rounding the multiplier up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from app.errors import AppError
from app.ledger import transitions
from app.ledger.budget import BudgetState
from app.ledger.costs import UnitCosts
from app.ledger.plans import ChargeSpec, RunSpec, unit_costs
from app.ledger.transitions import HoldMode, RunState
from dp_core.errors import DpCoreError

#: The noise search gives up beyond this multiple of the requested noise.
_MAX_NOISE_FACTOR = 1e4
_NOISE_STEPS = 40


_PLURALS = {"epoch": "epochs", "batch": "batches", "round": "rounds", "unit": "units"}


def _units(count: int, unit: str) -> str:
    return f"{count} {unit if count == 1 else _PLURALS[unit]}"


@dataclass(frozen=True)
class WhatFits:
    """The largest number of units that fits as requested, and the noise that fits the plan.

    ``unit`` names the plan's unit of charge in the sentence: an epoch (DP-SGD), a batch of
    queries (PATE), a round (DP-FedAvg), or a unit.
    """

    epochs: int | None
    noise_multiplier: float | None
    unit: str = "epoch"

    def sentence(self) -> str:
        """Return the refusal's hint, e.g. '; 4 epochs would fit, or noise_multiplier 1.37'.

        ``unit`` names the run's unit of charge (epoch, round, batch).
        """
        parts = []
        if self.epochs:
            parts.append(f"{_units(self.epochs, self.unit)} would fit")
        if self.noise_multiplier is not None:
            every = _PLURALS[self.unit]
            parts.append(f"noise_multiplier {self.noise_multiplier:.4g} would fit all {every}")
        return "; " + ", or ".join(parts) if parts else ""


def _fits(state: BudgetState, costs: UnitCosts, mode: HoldMode) -> bool:
    return not transitions.open_run(state, RunState(costs=costs, mode=mode)).refused


def _truncated(costs: UnitCosts, units: int) -> UnitCosts:
    segments, left = [], units
    for count, cost in costs.segments:
        if left <= 0:
            break
        segments.append((min(count, left), cost))
        left -= count
    return UnitCosts(tuple(segments))


def epochs_that_fit(state: BudgetState, costs: UnitCosts, mode: HoldMode) -> int:
    """Return the largest k < units such that the first k units would be admitted (0 if none)."""
    if mode is not HoldMode.plan:
        return 0
    low, high = 0, costs.units - 1  # invariant: low fits (0 trivially), high+1 does not
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(state, _truncated(costs, middle), mode):
            low = middle
        else:
            high = middle - 1
    return low


def noise_multiplier_that_fits(
    state: BudgetState, spec: RunSpec, mode: HoldMode, orders: list[float]
) -> float | None:
    """Return the smallest constant noise multiplier (3 digits, rounded up) that fits the plan."""
    if not spec.schedule.is_constant:
        return None

    def fits(sigma: float) -> bool:
        trial = replace(spec, schedule=replace(spec.schedule, noise_multiplier=sigma))
        try:
            costs = unit_costs(trial, tuple(orders), max_noise_levels=1)
        except (AppError, DpCoreError):  # a trial the accountant refuses does not fit
            return False
        return _fits(state, costs, mode)

    low, high = spec.schedule.noise_multiplier, spec.schedule.noise_multiplier * _MAX_NOISE_FACTOR
    if not fits(high):
        return None
    for _ in range(_NOISE_STEPS):
        if high / low < 1.0005:
            break
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    step = 10.0 ** (math.floor(math.log10(high)) - 2)  # three significant digits, rounded up
    rounded = float(f"{math.ceil(high / step) * step:.3g}")
    for _ in range(3):  # the product may land a hair low; more noise only fits better
        if fits(rounded):
            return rounded
        rounded += step
    return None


def what_fits(
    state: BudgetState,
    spec: ChargeSpec,
    costs: UnitCosts,
    mode: HoldMode,
    orders: list[float],
    unit: str = "epoch",
) -> WhatFits | None:
    """Return what would fit a refused plan (None for kinds where neither answer applies)."""
    if mode is HoldMode.once:
        return None
    epochs = epochs_that_fit(state, costs, mode)
    noise = (
        noise_multiplier_that_fits(state, spec, mode, orders) if isinstance(spec, RunSpec) else None
    )
    return WhatFits(epochs=epochs, noise_multiplier=noise, unit=unit)
