"""Epsilon readouts of RDP vectors: a run's own epsilon, a kind's, the non-adaptive total.

The one definition behind every "epsilon_run" and "epsilon_non_adaptive" the API, the
dashboard, the statement and a charge's answer show: the summed stored costs (exact quanta,
already rounded up) read back as floats rounded up, converted at the dataset's delta with the
Canonne-Kamath-Steinke 2020 conversion (:func:`dp_core.conversion.rdp_to_epsilon`), minimised
over the dataset's orders. This is the plain accountant's number (what Opacus prints for the same
run and orders); the dataset's headline *spent* epsilon is the filter's (:mod:`app.ledger.budget`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.ledger import quanta
from app.ledger.costs import UnitCosts
from app.ledger.quanta import Vec
from dp_core.conversion import rdp_to_epsilon

__all__ = ["EpsilonReadout", "epsilon_of_vector", "run_epsilon"]


@dataclass(frozen=True)
class EpsilonReadout:
    """An RDP vector read as (epsilon, delta)-DP.

    Attributes:
        epsilon: The epsilon at the dataset's delta; None when no order bounds it (unbounded).
        order: The Renyi order that gives it; None for a zero vector or an unbounded one.
    """

    epsilon: float | None
    order: float | None


def epsilon_of_vector(*, orders: Sequence[float], vector: Vec, delta: float) -> EpsilonReadout:
    """Return the plain epsilon of a summed cost vector (exactly 0 for a zero vector)."""
    if quanta.is_zero(vector):
        return EpsilonReadout(0.0, None)
    result = rdp_to_epsilon(
        orders=list(orders), rdp=quanta.to_floats_up(vector), delta=delta, warn=False
    )
    if not math.isfinite(result.epsilon):
        return EpsilonReadout(None, None)
    return EpsilonReadout(result.epsilon, result.order)


def run_epsilon(
    *, orders: Sequence[float], costs: UnitCosts, units: int, delta: float
) -> EpsilonReadout:
    """Return the epsilon of a run's first ``units`` units (its charges, or its whole plan)."""
    return epsilon_of_vector(orders=orders, vector=costs.total(0, units), delta=delta)
