"""The admission filter: per-order RDP filters behind a union bound (pure numpy, no I/O).

At dataset creation we fix (eps_G, delta_G), a grid A of orders and weights w_a summing to 1, and
the capacity B(a) of each order at delta_a = w_a * delta_G (the Canonne-Kamath-Steinke / Balle et
al. 2020 conversion solved for the RDP, :func:`dp_core.conversion.rdp_capacity`).

State: S(a), committed plus open reservations, and the alive set L (starts as A, only shrinks).
A request with RDP curve x is admitted iff some a in L has S(a) + x(a) <= B(a); on admission S
grows by x and every order with S(a) > B(a) leaves L. A refusal changes nothing; releases lower S
but never bring an order back into L.

Why this is valid under adaptive composition: for a fixed order a, admitting while
S(a) <= B(a) is the RDP privacy filter of Feldman & Zrnic 2021 ("Individual Privacy Accounting via
a Renyi Filter", Thm. 4.3), hence (a, B(a))-RDP and so (eps_G, delta_a)-DP. On every transcript
whose final min(L) is a, the service behaved exactly as that single-order filter (an order that
ever overflowed is never used again). A union bound over the K orders gives
(eps_G, sum_a delta_a) = (eps_G, delta_G)-DP.

Epsilons reported for a state are the smallest eps for which some alive order would still hold,
eps_G + min_{a in L} (S(a) - B(a)), since B(a) moves one-for-one with eps_G (0 for an
all-zero curve). A request is admitted exactly when its projected epsilon is <= eps_G.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.models import FloatArray

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class FilterState:
    """One dataset's filter: capacity B, S (committed + open reservations), alive set L."""

    target_epsilon: float
    capacity: FloatArray
    reserved: FloatArray
    alive: BoolArray


@dataclass(frozen=True)
class FilterDecision:
    """The answer for one request: the new state when admitted, the old one when refused."""

    admitted: bool
    order_index: int | None
    epsilon_projected: float
    epsilon_remaining: float
    state: FilterState


def filter_epsilon(state: FilterState, rdp: FloatArray) -> float:
    """Return eps_G + min over alive orders of (rdp(a) - B(a)), clipped at 0 (inf if none).

    An all-zero curve (nothing released) is exactly 0; the conversion alone would report a small
    positive bound for it.
    """
    if not np.any(rdp):
        return 0.0
    with np.errstate(invalid="ignore"):
        gap = np.where(state.alive, rdp - state.capacity, np.inf)
    lowest = float(np.min(gap)) if gap.size else float("inf")
    return max(0.0, state.target_epsilon + lowest)


def epsilon_remaining(state: FilterState) -> float:
    """Return max(0, eps_G - filter epsilon of S): the budget left for the next request."""
    return max(0.0, state.target_epsilon - filter_epsilon(state, state.reserved))


def decide(state: FilterState, rdp: FloatArray) -> FilterDecision:
    """Apply the admission rule to a request with RDP curve ``rdp``."""
    # The sum is rounded up, so S never understates what was reserved.
    projected = np.nextafter(state.reserved + rdp, np.inf)
    fits = state.alive & (projected <= state.capacity)
    remaining = epsilon_remaining(state)
    eps_projected = filter_epsilon(state, projected)
    if not np.any(fits):
        return FilterDecision(False, None, eps_projected, remaining, state)
    new_state = FilterState(
        target_epsilon=state.target_epsilon,
        capacity=state.capacity,
        reserved=projected,
        alive=state.alive & (projected <= state.capacity),
    )
    return FilterDecision(True, int(np.argmax(fits)), eps_projected, remaining, new_state)
