"""RDP of the sampled Gaussian against independent oracles and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_core.rdp.gaussian import rdp_gaussian
from dp_core.rdp.laplace import rdp_laplace
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian, rdp_sampled_gaussian_matrix
from tests.unit.dp_core.oracles import (
    rdp_laplace_quad,
    rdp_sampled_gaussian_binomial,
    rdp_sampled_gaussian_quad,
)

REGIMES = [
    (0.004166666666666667, 1.3),
    (0.01, 1.0),
    (0.3, 1.5),
    (0.1, 0.8),
    (0.001, 5.0),
    (0.05, 2.0),
]


def ours(q: float, sigma: float, alpha: float) -> float:
    return float(
        rdp_sampled_gaussian(sample_rate=q, noise_multiplier=sigma, orders=np.array([alpha]))[0]
    )


@pytest.mark.parametrize(("q", "sigma"), REGIMES)
@pytest.mark.parametrize("alpha", [1.01, 1.1, 1.5, 2.5, 4.9, 7.8, 10.9, 17.776])
def test_fractional_orders_match_quadrature(q, sigma, alpha):
    expected = rdp_sampled_gaussian_quad(q, sigma, alpha)
    assert ours(q, sigma, alpha) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize(("q", "sigma"), REGIMES)
@pytest.mark.parametrize("alpha", [2, 3, 8, 18, 32])
def test_integer_orders_match_quadrature_and_binomial_sum(q, sigma, alpha):
    value = ours(q, sigma, alpha)
    assert value == pytest.approx(rdp_sampled_gaussian_binomial(q, sigma, alpha), rel=1e-9)
    if (alpha - 1) * value < 600:  # the quadrature oracle works in floats: A must stay below e^600
        assert value == pytest.approx(rdp_sampled_gaussian_quad(q, sigma, alpha), rel=1e-8)


@pytest.mark.parametrize("alpha", [128, 1024, 2048])
def test_large_orders_match_binomial_sum(alpha):
    assert ours(0.02, 2.0, alpha) == pytest.approx(
        rdp_sampled_gaussian_binomial(0.02, 2.0, alpha), rel=1e-12
    )


def test_orders_near_integers_are_continuous():
    at = ours(0.004166666666666667, 1.3, 18.0)
    assert ours(0.004166666666666667, 1.3, 18.0 - 1e-7) == pytest.approx(at, rel=1e-5)
    assert ours(0.004166666666666667, 1.3, 18.0 + 1e-7) == pytest.approx(at, rel=1e-5)


def test_q_one_is_the_gaussian_and_q_zero_is_free():
    orders = np.array([1.5, 2.0, 7.3, 64.0])
    full = rdp_sampled_gaussian(sample_rate=1.0, noise_multiplier=1.7, orders=orders)
    np.testing.assert_allclose(full, orders / (2 * 1.7**2), rtol=1e-15)
    assert not np.any(rdp_sampled_gaussian(sample_rate=0.0, noise_multiplier=1.7, orders=orders))


def test_small_q_limit_is_the_second_order_term():
    # MTZ 2019: A - 1 = C(alpha, 2) q^2 (e^{1/s^2} - 1) + O(q^3), so RDP ~ alpha q^2 (e^{1/s^2} - 1) / 2.
    q, sigma = 1e-6, 1.2
    for alpha in (1.5, 2.0, 6.5, 20.0):
        expected = alpha * q * q * math.expm1(1 / sigma**2) / 2
        assert ours(q, sigma, alpha) == pytest.approx(expected, rel=1e-4)


def test_matrix_is_the_same_as_one_sigma_at_a_time():
    sigmas = np.array([0.7, 1.0, 3.3])
    orders = np.array([1.1, 2.0, 5.5, 63.0])
    matrix = rdp_sampled_gaussian_matrix(sample_rate=0.02, noise_multipliers=sigmas, orders=orders)
    for row, sigma in zip(matrix, sigmas, strict=True):
        np.testing.assert_allclose(
            row,
            rdp_sampled_gaussian(sample_rate=0.02, noise_multiplier=sigma, orders=orders),
            rtol=1e-14,
        )


def test_gaussian_closed_form():
    np.testing.assert_allclose(
        rdp_gaussian(noise_multiplier=2.0, orders=np.array([2.0, 8.0])), [0.25, 1.0]
    )


@pytest.mark.parametrize("b", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 10.0])
def test_laplace_matches_quadrature(b, alpha):
    value = rdp_laplace(noise_scale=b, orders=np.array([alpha]))[0]
    assert value == pytest.approx(rdp_laplace_quad(b, alpha), rel=1e-9)


def test_laplace_tends_to_pure_dp_at_large_orders():
    # D_inf of Laplace with scale b is 1/b (pure (1/b)-DP).
    assert rdp_laplace(noise_scale=2.0, orders=np.array([1e6]))[0] == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0, 2.0, 5.0])
def test_rdp_is_nondecreasing_in_the_sampling_rate(sigma):
    # Per-class sampling rates (dp_core.trainer.class_sampling) charge the run at q_max: this
    # needs the RDP curve of every order to grow with q. dp_core's values on its whole grid...
    from dp_core.rdp.orders import DEFAULT_ORDERS

    qs = np.concatenate([np.geomspace(1e-5, 0.5, 40), np.linspace(0.5, 1.0, 11)[1:]])
    rdp = np.array(
        [
            rdp_sampled_gaussian(sample_rate=q, noise_multiplier=sigma, orders=DEFAULT_ORDERS)
            for q in qs
        ]
    )
    steps = np.diff(rdp, axis=0)
    assert np.all(steps >= -1e-12 * np.abs(rdp[1:])), np.argwhere(steps < 0)
    # ...and the independent binomial closed form at integer orders (q < 1), strictly increasing.
    for alpha in (2, 3, 8, 32):
        oracle = [rdp_sampled_gaussian_binomial(q, sigma, alpha) for q in qs[:-1]]
        assert all(a < b for a, b in zip(oracle, oracle[1:], strict=False)), alpha


def test_epsilon_is_nondecreasing_in_the_sampling_rate():
    import dp_core

    qs = [0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]
    eps = [
        dp_core.compute_epsilon(sample_rate=q, noise_multiplier=1.1, steps=500, delta=1e-5).epsilon
        for q in qs
    ]
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False)), eps
