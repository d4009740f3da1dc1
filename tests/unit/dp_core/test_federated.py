"""User-level DP-FedAvg accounting, checked against independent computations."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from dp_core import InvalidParameterError, RdpAccountant
from dp_core.conversion import rdp_to_epsilon
from dp_core.federated import (
    PEARSON_VAJDA_MAX_ORDER,
    DpFedAvgRounds,
    _log_pv_moments,
    _pv_moments_upper,
    quantized_sensitivity,
    rdp_fixed_size_gaussian,
)
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
    """WBK 2019 Thm. 9 written out term by term with exact binomials (shifted by the top term)."""
    eps = [None, None] + [2.0 * j / sigma**2 for j in range(2, alpha + 1)]
    logs = [2 * math.log(gamma) + math.log(math.comb(alpha, 2)) + min(
        math.log(4.0 * math.expm1(eps[2])), math.log(2.0) + eps[2]
    )]  # fmt: skip
    for j in range(3, alpha + 1):
        logs.append(
            j * math.log(gamma) + math.log(math.comb(alpha, j)) + (j - 1) * eps[j] + math.log(2)
        )
    top = max(logs)  # log(1 + S): log1p(S) when S is small, else shifted by its largest term
    rest = math.fsum(math.exp(x - top) for x in logs)
    if top < 0.0:
        return math.log1p(math.exp(top) * rest) / (alpha - 1)
    return (top + math.log(math.exp(-top) + rest)) / (alpha - 1)


def theorem9_ceiling(gamma: float, sigma: float, alpha: float) -> float:
    """The previous bound: Thm. 9 alone, a fractional order charged at its ceiling."""
    return wbk_exact(Fraction(gamma), sigma, max(2, math.ceil(alpha)))


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_small_noise_is_theorem_9_written_out(sigma):
    # At small sigma every Pearson-Vajda term exceeds Thm. 9's, so the bound is Thm. 9's.
    orders = np.arange(2, 13, dtype=np.float64)
    got = rdp_fixed_size_gaussian(sample_rate=0.1, noise_multiplier=sigma, orders=orders)
    want = [wbk_exact(Fraction(1, 10), sigma, int(a)) for a in orders]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def log_pearson_vajda_quad(k: int, d: float) -> float:
    """log E_Q[(P/Q - 1)^k] for P = N(d, 1), Q = N(0, 1) by numerical integration (k even).

    The integrand peaks near z = k d at about exp(k (k-1) d^2 / 2); it is integrated scaled by
    that, in log space, so it cannot overflow.
    """
    shift = k * (k - 1) * d * d / 2

    def scaled(z: float) -> float:
        u = d * z - d * d / 2
        if u == 0.0:
            return 0.0
        return math.exp(k * math.log(abs(math.expm1(u))) + stats.norm.logpdf(z) - shift)

    value, _ = integrate.quad(
        scaled, -40.0, 40.0 + k * d, points=[d / 2, k * d], limit=400, epsabs=0.0, epsrel=1e-12
    )
    return math.log(value) + shift


@pytest.mark.parametrize("sigma", [1.0, 4.0, 16.0, 100.0])
@pytest.mark.parametrize("k", [2, 4, 10, 24, 40])
def test_pearson_vajda_moments_match_integration_and_round_up(sigma, k):
    d = 2.0 / sigma  # replace-one sensitivity 2C over the noise std sigma C
    got = _log_pv_moments(d * d, PEARSON_VAJDA_MAX_ORDER)[k]
    assert got == pytest.approx(log_pearson_vajda_quad(k, d), rel=1e-8, abs=1e-8)
    exact = _pv_moments_upper(d * d, k)[-1]  # the decimal value before rounding to a float
    assert got >= float(exact.ln())


@pytest.mark.parametrize("k", [128, 256])
def test_pearson_vajda_moments_cancel_hundreds_of_digits(k):
    # sigma = 50: M_256 ~ e^-148 while the alternating terms reach 1e+77; floats cannot do this.
    d = 2.0 / 50.0
    got = _log_pv_moments(d * d, PEARSON_VAJDA_MAX_ORDER)[k]
    assert got == pytest.approx(log_pearson_vajda_quad(k, d), rel=1e-8)
    assert got >= (k / 2) * math.log(math.expm1(d * d))  # Lyapunov: M_k >= M_2^(k/2)


REFERENCE = json.loads((Path(__file__).parent / "data" / "fixed_size_cases.json").read_text())


@pytest.mark.parametrize(
    "case", REFERENCE["cases"], ids=lambda c: f"q{c['sample_rate']}-s{c['noise_multiplier']}"
)
def test_matches_or_beats_dp_accounting_on_its_grid(case):
    orders = np.array(REFERENCE["orders"])
    ours = rdp_fixed_size_gaussian(
        sample_rate=case["sample_rate"], noise_multiplier=case["noise_multiplier"], orders=orders
    )
    theirs = np.array(case["rdp"])
    # dp_accounting sums the same Pearson-Vajda terms in floats; its alternating sums lose up to
    # ~1e-9 relative at large sigma (ours are exact to 1e-20 and rounded up), hence the slack.
    assert np.all(ours <= theirs * (1 + 1e-8))
    for steps, epsilon in case["epsilon"].items():
        mine = rdp_to_epsilon(
            orders=orders, rdp=int(steps) * ours, delta=REFERENCE["delta"], warn=False
        )
        assert mine.epsilon <= epsilon * (1 + 1e-8) + 1e-12


def renyi_divergence_quad(logp, logq, alpha: float, *, width: float) -> float:
    """D_alpha(P || Q) by quad, the integrand scaled by its largest value on a grid (no overflow)."""

    def log_integrand(x):
        return alpha * logp(x) + (1 - alpha) * logq(x)

    grid = np.linspace(-width, width, 4001)
    values = log_integrand(grid)
    shift, peak = float(np.max(values)), float(grid[np.argmax(values)])
    value, _ = integrate.quad(
        lambda x: math.exp(log_integrand(x) - shift), -width, width, points=[peak], limit=400
    )
    return (math.log(value) + shift) / (alpha - 1)


def exact_fixed_size_rdp(gamma: float, sigma: float, alpha: float) -> float:
    """Renyi divergence (both directions) of a replace-one pair: one user's update -C vs +C."""

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

    width = 12 * sigma + 4 * alpha / sigma + 4
    return max(
        renyi_divergence_quad(logp, logq, alpha, width=width),
        renyi_divergence_quad(logq, logp, alpha, width=width),
    )


def fixed_size_bound(gamma: float, sigma: float, alpha: float) -> float:
    return float(
        rdp_fixed_size_gaussian(
            sample_rate=gamma, noise_multiplier=sigma, orders=np.array([float(alpha)])
        )[0]
    )


@pytest.mark.parametrize(
    ("gamma", "sigma"), [(0.1, 1.0), (0.5, 2.0), (0.05, 0.8), (0.1, 8.0), (0.3, 16.0)]
)
@pytest.mark.parametrize("alpha", [2, 2.5, 3, 6, 7.3, 20])
def test_fixed_size_bound_is_at_least_an_exact_neighbouring_pair(gamma, sigma, alpha):
    # Replace one user: its clipped update goes from -C to +C (C = 1), the others contribute 0.
    # Without replacement that user is in the sample with probability gamma = m / N.
    bound = fixed_size_bound(gamma, sigma, alpha)
    assert bound >= exact_fixed_size_rdp(gamma, sigma, alpha)
    assert bound < 2 * alpha / sigma**2  # and subsampling amplifies: below the replace-one Gaussian
    assert bound <= theorem9_ceiling(gamma, sigma, alpha) * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(
    gamma=st.floats(0.001, 0.9),
    sigma=st.floats(0.7, 40.0),
    alpha=st.one_of(st.integers(2, 24).map(float), st.floats(1.01, 24.0)),
)
def test_never_below_the_exact_divergence(gamma, sigma, alpha):
    assert fixed_size_bound(gamma, sigma, alpha) >= exact_fixed_size_rdp(gamma, sigma, alpha)


@settings(max_examples=60, deadline=None)
@given(
    gamma=st.floats(1e-4, 0.99),
    sigma=st.floats(0.3, 200.0),
    alpha=st.one_of(st.integers(2, 300).map(float), st.floats(1.01, 300.0)),
)
def test_never_above_the_previous_bound(gamma, sigma, alpha):
    previous = theorem9_ceiling(gamma, sigma, alpha)
    assert fixed_size_bound(gamma, sigma, alpha) <= previous * (1 + 1e-12)


def test_fractional_orders_interpolate_the_cumulant_and_never_exceed_the_ceiling():
    got = rdp_fixed_size_gaussian(
        sample_rate=0.2, noise_multiplier=4.0, orders=np.array([1.5, 2.0, 2.5, 3.0, 9.25, 10.0])
    )
    assert got[0] == got[1]  # below 2 the interpolation from f(1) = 0 is the bound at 2
    # (a - 1) eps(a) <= (1 - t)(2 - 1) eps(2) + t (3 - 1) eps(3) at a = 2.5, t = 0.5
    assert got[2] == pytest.approx((0.5 * got[1] + 0.5 * 2 * got[3]) / 1.5, rel=1e-12)
    assert got[1] <= got[2] <= got[3] and got[4] <= got[5]


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
