"""A dataset's budget as a pure state, and the per-order RDP filter that guards it.

At dataset creation we fix (eps_G, delta_G), a grid A of orders with weights w_a summing to 1,
and the capacity B(a) of each order at delta_a = w_a * delta_G (the Canonne-Kamath-Steinke 2020 /
Balle et al. 2020 conversion solved for the RDP, :func:`dp_core.conversion.rdp_capacity`),
rounded down (:func:`app.ledger.rounding.capacity_down`).

State: S(a) = ``reserved`` (committed plus open reservations), C(a) = ``committed`` (charged),
and the alive set L (starts as A, only shrinks). A request with cost x is admitted iff some a in
L has S(a) + x(a) <= B(a); on admission S grows by x and every order with S(a) > B(a) leaves L.
A refusal changes nothing; releases lower S but never bring an order back into L. All of it is
exact integer arithmetic (:mod:`app.ledger.quanta`), so after every transition, exactly:

    C(a) <= S(a) for every order, and S(a) <= B(a) for every alive order.

Why this is valid under adaptive composition: for a fixed order a, admitting while S(a) <= B(a)
is the RDP privacy filter of Feldman & Zrnic 2021 ("Individual Privacy Accounting via a Renyi
Filter", Thm. 4.3), hence (a, B(a))-RDP and so (eps_G, delta_a)-DP. On every transcript whose
final min(L) is a, the service behaved exactly as that single-order filter (an order that ever
overflowed is never used again). A union bound over the K orders gives (eps_G, delta_G)-DP.

The epsilon of a vector v is the smallest eps for which some alive order would still hold,
eps_G + min_{a in L} (v(a) - B(a)) (B(a) moves one-for-one with eps), clipped at 0, and exactly 0
for an all-zero vector. Computed in exact rationals and rounded up, it never exceeds eps_G for a
v <= S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

from app.ledger import quanta
from app.ledger.quanta import Vec


@dataclass(frozen=True)
class BudgetState:
    """One dataset's filter: eps_G (the filter's share), capacity B, S, C and the alive set L."""

    target_epsilon: float
    capacity: Vec
    reserved: Vec
    committed: Vec
    alive: tuple[bool, ...]

    @classmethod
    def empty(cls, *, target_epsilon: float, capacity: Vec) -> BudgetState:
        """Return the state of a new dataset: nothing spent, every usable order alive.

        An order whose capacity is negative can hold no cost at all (its conversion alone
        exceeds eps_G), so it starts outside L; S(a) <= B(a) then holds at every alive order.
        """
        zero = quanta.zeros(len(capacity))
        alive = tuple(b is not None and b >= 0 for b in capacity)
        return cls(target_epsilon, capacity, zero, zero, alive)

    @property
    def usable(self) -> bool:
        """Whether some alive order can still hold a positive cost (a dead grid holds none)."""
        return any(
            alive and b is not None and s is not None and s < b
            for alive, b, s in zip(self.alive, self.capacity, self.reserved, strict=True)
        )


@dataclass(frozen=True)
class Admission:
    """The filter's answer: the new state when admitted, the old one when refused."""

    admitted: bool
    order_index: int | None
    epsilon_projected: float
    epsilon_remaining: float
    state: BudgetState


def _exact_epsilon(state: BudgetState, vector: Vec) -> Fraction | None:
    """Return eps_G + min over alive orders of (v - B), clipped at 0; None for +inf."""
    if quanta.is_zero(vector):
        return Fraction(0)
    gaps = [
        Fraction(v - b, 1 << quanta.QUANTUM_BITS)
        for v, b, alive in zip(vector, state.capacity, state.alive, strict=True)
        if alive and v is not None and b is not None
    ]
    if not gaps:
        return None
    return max(Fraction(0), Fraction(state.target_epsilon) + min(gaps))


def _round_up(value: Fraction | None) -> float:
    if value is None:
        return math.inf
    nearest = float(value)
    return nearest if Fraction(nearest) >= value else math.nextafter(nearest, math.inf)


def _round_down(value: Fraction) -> float:
    nearest = float(value)
    return nearest if Fraction(nearest) <= value else math.nextafter(nearest, -math.inf)


def epsilon_of(state: BudgetState, vector: Vec) -> float:
    """Return the filter epsilon of ``vector`` (rounded up; +inf when no alive order bounds it)."""
    return _round_up(_exact_epsilon(state, vector))


def epsilon_spent(state: BudgetState) -> float:
    """Return the filter epsilon of what was charged."""
    return epsilon_of(state, state.committed)


def epsilon_reserved(state: BudgetState) -> float:
    """Return what open reservations add to the spent epsilon (rounded up)."""
    held, spent = _exact_epsilon(state, state.reserved), _exact_epsilon(state, state.committed)
    if held is None or spent is None:
        return math.inf
    return _round_up(held - spent)


def epsilon_remaining(state: BudgetState) -> float:
    """Return eps_G minus the filter epsilon of S, >= 0, rounded down: what may still be reserved."""
    held = _exact_epsilon(state, state.reserved)
    if held is None or not any(state.alive):  # no order can admit anything any more
        return 0.0
    return max(0.0, _round_down(Fraction(state.target_epsilon) - held))


def admit(state: BudgetState, cost: Vec) -> Admission:
    """Apply the admission rule to a request costing ``cost``."""
    projected = quanta.add(state.reserved, cost)
    within = quanta.at_most(projected, state.capacity)
    fits = tuple(a and w for a, w in zip(state.alive, within, strict=True))
    remaining = epsilon_remaining(state)
    eps_projected = epsilon_of(state, projected)
    if not any(fits):
        return Admission(False, None, eps_projected, remaining, state)
    new = replace(state, reserved=projected, alive=fits)
    return Admission(True, fits.index(True), eps_projected, remaining, new)


def commit(state: BudgetState, cost: Vec) -> BudgetState:
    """Move ``cost`` from reserved to charged (it must already be part of S)."""
    committed = quanta.add(state.committed, cost)
    if not quanta.covered(committed, state.reserved):
        raise ValueError("a charge must be covered by what was reserved")
    return replace(state, committed=committed)


def release(state: BudgetState, cost: Vec) -> BudgetState:
    """Give back a reservation that will never be charged (L is left as it is)."""
    reserved = quanta.subtract(state.reserved, cost)
    if not quanta.covered(state.committed, reserved):
        raise ValueError("cannot release what was charged")
    return replace(state, reserved=reserved)


def headroom_used(state: BudgetState) -> tuple[float | None, ...]:
    """Return S(a)/B(a), the share of each order's capacity in use (None where B(a) <= 0).

    An order whose capacity is not positive can hold no cost at all (its conversion alone uses
    more than eps_G); it is shown as unusable rather than as a negative number.
    """
    shares: list[float | None] = []
    for s, b in zip(state.reserved, state.capacity, strict=True):
        if b is None or b <= 0:
            shares.append(None)
        elif s is None:
            shares.append(math.inf)
        else:
            shares.append(_round_up(Fraction(s, b)))
    return tuple(shares)
