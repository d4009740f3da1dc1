"""User-level DP-FedAvg accounting, checked against independent computations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate, stats

from dp_core import InvalidParameterError, RdpAccountant
from dp_core.federated import DpFedAvgRounds, quantized_sensitivity, rdp_fixed_size_gaussian
from dp_core.mechanisms import mechanism_from_dict, mechanism_to_dict
from dp_core.rdp.compose import compute_rdp

from .oracles import rdp_sampled_gaussian_quad


def poisson(**kw):
    base = {
        "users": 100,
        "sampling": "poisson",
        "sample_rate": 0.1,
        "noise_multiplier": 1.2,
        "clip": 1.0,
    }
    return DpFedAvgRounds(**{**base, **kw})


def fixed(**kw):
    base = {
        "users": 100,
        "sampling": "fixed",
        "clients_per_round": 10,
        "noise_multiplier": 2.0,
        "clip": 1.0,
    }
    return DpFedAvgRounds(**{**base, **kw})


@pytest.mark.parametrize("alpha", [2.0, 4.5, 8.0])
def test_poisson_round_is_the_sampled_gaussian_by_integration(alpha):
    one = compute_rdp(poisson(rounds=1), [alpha])[0]
    assert one == pytest.approx(rdp_sampled_gaussian_quad(0.1, 1.2, alpha), rel=1e-6)
    assert compute_rdp(poisson(rounds=7), [alpha])[0] == pytest.approx(7 * one, rel=1e-12)


def wbk_exact(gamma: Fraction, sigma: float, alpha: int) -> float:
    """WBK 2019 Thm. 9 written out term by term with exact binomials (no log space)."""
    eps = [None, None] + [2.0 * j / sigma**2 for j in range(2, alpha + 1)]
    total = 1.0 + float(gamma**2) * math.comb(alpha, 2) * min(
        4.0 * (math.exp(eps[2]) - 1.0), 2.0 * math.exp(eps[2])
    )
    for j in range(3, alpha + 1):
        total += float(gamma**j) * math.comb(alpha, j) * math.exp((j - 1) * eps[j]) * 2.0
    return math.log(total) / (alpha - 1)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 5.0])
def test_fixed_size_matches_theorem_9_written_out(sigma):
    orders = np.arange(2, 13, dtype=np.float64)
    got = rdp_fixed_size_gaussian(sample_rate=0.1, noise_multiplier=sigma, orders=orders)
    want = [wbk_exact(Fraction(1, 10), sigma, int(a)) for a in orders]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def renyi_divergence_quad(logp, logq, alpha: float, *, width: float) -> float:
    value, _ = integrate.quad(
        lambda x: math.exp(alpha * logp(x) + (1 - alpha) * logq(x)), -width, width, limit=400
    )
    return math.log(value) / (alpha - 1)


@pytest.mark.parametrize(("gamma", "sigma"), [(0.1, 1.0), (0.5, 2.0), (0.05, 0.8)])
@pytest.mark.parametrize("alpha", [2, 3, 6])
def test_fixed_size_bound_is_at_least_an_exact_neighbouring_pair(gamma, sigma, alpha):
    # Replace one user: its clipped update goes from -C to +C (C = 1), the others contribute 0.
    # Without replacement that user is in the sample with probability gamma = m / N.
    def logp(x):
        return np.logaddexp(
            math.log(1 - gamma) + stats.norm.logpdf(x, 0, sigma),
            math.log(gamma) + stats.norm.logpdf(x, -1, sigma),
        )

    def logq(x):
        return np.logaddexp(
            math.log(1 - gamma) + stats.norm.logpdf(x, 0, sigma),
            math.log(gamma) + stats.norm.logpdf(x, 1, sigma),
        )

    width = 12 * sigma * alpha + 4
    exact = max(
        renyi_divergence_quad(logp, logq, alpha, width=width),
        renyi_divergence_quad(logq, logp, alpha, width=width),
    )
    bound = rdp_fixed_size_gaussian(
        sample_rate=gamma, noise_multiplier=sigma, orders=np.array([float(alpha)])
    )[0]
    assert bound >= exact
    assert bound < 2 * alpha / sigma**2  # and subsampling amplifies: below the replace-one Gaussian


def test_fractional_orders_round_up_toward_privacy():
    got = rdp_fixed_size_gaussian(
        sample_rate=0.2, noise_multiplier=1.5, orders=np.array([1.5, 2.0, 2.5, 3.0])
    )
    assert got[0] == got[1] and got[2] == got[3] and got[3] > got[1]


def test_fixed_size_full_participation_is_the_replace_one_gaussian():
    got = compute_rdp(fixed(clients_per_round=100, noise_multiplier=2.0), [2.0, 10.0])
    np.testing.assert_allclose(got, [2 * 2.0 / 4.0, 2 * 10.0 / 4.0])


def test_quantization_charges_the_larger_sensitivity():
    assert quantized_sensitivity(
        clip=1.0, quantization_step=0.01, dimension=10_000
    ) == pytest.approx(2.0)
    quantized = poisson(quantization_step=0.01, dimension=10_000)
    assert quantized.effective_noise_multiplier == pytest.approx(0.6)
    np.testing.assert_allclose(
        compute_rdp(quantized, [3.0]), compute_rdp(poisson(noise_multiplier=0.6), [3.0]), rtol=1e-12
    )
    assert compute_rdp(quantized, [3.0])[0] > compute_rdp(poisson(), [3.0])[0]


def test_epsilon_through_the_accountant_grows_with_rounds():
    eps = []
    for rounds in (10, 100):
        accountant = RdpAccountant()
        accountant.compose(poisson(rounds=rounds))
        eps.append(accountant.get_epsilon(delta=1e-5).epsilon)
    assert 0 < eps[0] < eps[1]


@pytest.mark.parametrize(
    "mechanism", [poisson(rounds=3), fixed(rounds=4, quantization_step=0.5, dimension=9)]
)
def test_json_round_trip(mechanism):
    assert mechanism_from_dict(mechanism_to_dict(mechanism)) == mechanism


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sampling": "fixed"},  # Poisson's sample_rate given with fixed sampling
        {"sampling": "other"},
        {"sample_rate": None, "clients_per_round": 3},
        {"users": 0},
        {"clip": 0.0},
        {"quantization_step": 0.1},  # no dimension
        {"quantization_step": -1.0, "dimension": 3},
    ],
)
def test_invalid_configurations_are_refused(kwargs):
    with pytest.raises(InvalidParameterError):
        poisson(**kwargs)


def test_fixed_size_larger_than_the_federation_is_refused():
    with pytest.raises(InvalidParameterError):
        fixed(clients_per_round=101)
