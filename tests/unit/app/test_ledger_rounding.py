"""The ledger's margins cover dp_core's real floating-point error (high-precision oracles).

cost_up(x) must never fall below the exact RDP, and capacity_down(B) never above the exact
capacity, also where the fractional-order series is known to lose digits (q >= 0.5, large
sigma, orders near 1). The oracles are mpmath at 50 digits: the integer-order binomial sum of
Mironov, Talwar & Zhang 2019 (Thm. 5) and direct quadrature of E_{mu0}[(mu/mu0)^alpha] for
fractional orders.
"""

from __future__ import annotations

import random

import mpmath
import numpy as np
import pytest

from app.ledger import quanta
from app.ledger.rounding import capacity_down, cost_up
from dp_core.conversion import rdp_capacity
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian

mpmath.mp.dps = 50


def exact_integer_order(q: float, sigma: float, alpha: int) -> mpmath.mpf:
    q, s = mpmath.mpf(q), mpmath.mpf(sigma)
    total = mpmath.fsum(
        mpmath.binomial(alpha, k)
        * (1 - q) ** (alpha - k)
        * q**k
        * mpmath.exp((k * k - k) / (2 * s * s))
        for k in range(alpha + 1)
    )
    return mpmath.log(total) / (alpha - 1)


def exact_fractional_order(q: float, sigma: float, alpha: float) -> mpmath.mpf:
    q, s, a = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(alpha)

    def integrand(z: mpmath.mpf) -> mpmath.mpf:
        density = mpmath.npdf(z, 0, s)
        ratio = 1 - q + q * mpmath.exp((2 * z - 1) / (2 * s * s))
        return density * (ratio**a - 1 - a * q * (mpmath.exp((2 * z - 1) / (2 * s * s)) - 1))

    points = sorted({-40 * s, mpmath.mpf(0), mpmath.mpf(0.5), a, a + 40 * s})
    excess = mpmath.quad(integrand, [-mpmath.inf, *points, mpmath.inf])
    return mpmath.log1p(excess) / (a - 1)


def _cases(seed: int, count: int, *, integer: bool, hard: bool) -> list[tuple[float, float, float]]:
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        if hard:
            q, sigma = rng.uniform(0.5, 0.99), rng.uniform(10.0, 60.0)
            alpha = rng.uniform(1.001, 1.2)
        else:
            q, sigma = 10 ** rng.uniform(-4, -0.05), 10 ** rng.uniform(-0.3, 1.7)
            alpha = float(rng.randint(2, 64)) if integer else rng.uniform(1.05, 40.0)
        cases.append((q, sigma, alpha))
    return cases


def _covered(q: float, sigma: float, alpha: float, truth: mpmath.mpf) -> None:
    value = rdp_sampled_gaussian(sample_rate=q, noise_multiplier=sigma, orders=np.array([alpha]))
    (charged,) = cost_up(value)
    assert charged is not None
    assert mpmath.mpf(charged) / 2**quanta.QUANTUM_BITS >= truth, (q, sigma, alpha, value, truth)


@pytest.mark.parametrize(("q", "sigma", "alpha"), _cases(1, 40, integer=True, hard=False))
def test_integer_orders_are_covered(q, sigma, alpha):
    _covered(q, sigma, alpha, exact_integer_order(q, sigma, int(alpha)))


@pytest.mark.parametrize(
    ("q", "sigma", "alpha"), [(0.5, 50.0, 1.0025)] + _cases(2, 8, integer=False, hard=True)
)
def test_the_hard_fractional_corner_is_covered(q, sigma, alpha):
    _covered(q, sigma, alpha, exact_fractional_order(q, sigma, alpha))


@pytest.mark.parametrize(("q", "sigma", "alpha"), _cases(3, 8, integer=False, hard=False))
def test_fractional_orders_are_covered(q, sigma, alpha):
    _covered(q, sigma, alpha, exact_fractional_order(q, sigma, alpha))


@pytest.mark.parametrize("seed", range(6))
def test_capacities_are_never_above_the_exact_value(seed):
    rng = random.Random(seed)
    orders = sorted({round(rng.uniform(1.1, 256.0), 3) for _ in range(12)})
    epsilon, delta = rng.uniform(0.1, 50.0), 10 ** rng.uniform(-12, -2)
    deltas = np.full(len(orders), delta / len(orders))
    computed = capacity_down(rdp_capacity(orders=orders, epsilon=epsilon, deltas=deltas))
    for a, d, b in zip(orders, deltas, computed, strict=True):
        a_, d_ = mpmath.mpf(a), mpmath.mpf(float(d))
        truth = (
            mpmath.mpf(epsilon)
            + mpmath.log(d_) / (a_ - 1)
            - mpmath.log(1 - 1 / a_)
            + mpmath.log(a_) / (a_ - 1)
        )
        assert mpmath.mpf(b) / 2**quanta.QUANTUM_BITS <= truth
