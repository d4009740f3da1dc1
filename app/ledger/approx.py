"""The approximate-DP part of a budget: black-box (epsilon, delta) releases, and the split.

A dataset may set aside (eps_B, delta_B) of its (eps_G, delta_G) at creation for mechanisms that
come with an (epsilon, delta)-DP guarantee and no RDP curve. Basic composition of the two parts
(Dwork & Roth 2014, Thm. 3.16) gives (eps_G, delta_G); it stays valid when the requests of both
interleave adaptively, as both parts are filters (Rogers, Roth, Ullman & Vadhan 2016, Thm. 3.6;
concurrent composition: Vadhan & Wang 2021, Lyu 2022). So:

* the RDP filter guards (eps_G - eps_B, delta_G - delta_B), each rounded down
  (:func:`filter_target`);
* releases are admitted while the exact sums of their epsilons and deltas stay within
  (eps_B, delta_B) (:func:`admit_release`). Exact rational sums let releases fill the part to
  the last bit (0.6 + 0.4 fits in 1.0) and never admit a true sum above it; the float totals
  stored and shown are rounded up (never understating what was released).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from app.ledger.rounding import subtract_down

__all__ = ["ApproxDecision", "admit_release", "exact_sums", "filter_target", "part_remaining"]


@functools.lru_cache(maxsize=4096)  # pure; exact Fraction arithmetic, read on every charge
def filter_target(
    *, target_epsilon: float, target_delta: float, approx_epsilon: float, approx_delta: float
) -> tuple[float, float]:
    """Return the (epsilon, delta) the RDP filter guards: the budget minus the part set aside,
    each rounded down (toward privacy)."""
    return (
        subtract_down(target_epsilon, approx_epsilon),
        subtract_down(target_delta, approx_delta),
    )


def _up(value: Fraction) -> float:
    """Return the smallest float not below ``value``."""
    nearest = float(value)
    return nearest if Fraction(nearest) >= value else math.nextafter(nearest, math.inf)


def exact_sums(releases: Iterable[tuple[float, float]]) -> tuple[Fraction, Fraction]:
    """Return the exact sums of the (epsilon, delta) of admitted releases."""
    epsilon, delta = Fraction(0), Fraction(0)
    for release_epsilon, release_delta in releases:
        epsilon += Fraction(release_epsilon)
        delta += Fraction(release_delta)
    return epsilon, delta


@dataclass(frozen=True)
class ApproxDecision:
    """The approximate-DP part's answer to one release.

    Attributes:
        admitted: Whether the exact sums with the release stay within (eps_B, delta_B).
        epsilon_spent: The part's spent epsilon after the decision, rounded up (as stored).
        delta_spent: The part's spent delta after the decision, rounded up (as stored).
        epsilon_projected: What the part's epsilon would be with the release (rounded up).
    """

    admitted: bool
    epsilon_spent: float
    delta_spent: float
    epsilon_projected: float


def admit_release(
    *,
    budget: tuple[float, float],
    spent: tuple[Fraction, Fraction],
    release: tuple[float, float],
) -> ApproxDecision:
    """Apply basic composition to one (epsilon, delta) release against the part ``budget``."""
    epsilon = spent[0] + Fraction(release[0])
    delta = spent[1] + Fraction(release[1])
    admitted = epsilon <= Fraction(budget[0]) and delta <= Fraction(budget[1])
    kept = (epsilon, delta) if admitted else spent
    return ApproxDecision(admitted, _up(kept[0]), _up(kept[1]), _up(epsilon))


def part_remaining(*, budget: float, spent: float) -> float:
    """Return what is left of a part (>= 0), rounded down: never more than is really left."""
    return max(0.0, subtract_down(budget, spent))
