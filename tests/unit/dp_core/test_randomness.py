"""Secret generators and the exact discrete samplers of dp_core.randomness.

The samplers are checked against their exact pmfs with chi-square tests on seeded generators (so
the tests are deterministic: a seed either passes or fails, always), and with hypothesis over the
variance parameter. The secret generators are checked to differ from call to call.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dp_core.errors import InvalidParameterError
from dp_core.randomness import (
    NOISE_STREAM,
    SAMPLING_STREAM,
    discrete_gaussian_log_pmf,
    discrete_gaussian_noise,
    fresh_seed,
    noise_random,
    sample_bernoulli_exp,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    secret_generator,
    secure_random,
    stream_generator,
    stream_seed,
)


def _chi_square_pvalue(draws: list[int], log_pmf: dict[int, float]) -> float:
    """Chi-square goodness of fit, the tails (expected count < 5) pooled into one cell."""
    n = len(draws)
    values, counts = np.unique(np.asarray(draws), return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    cells = [k for k, lp in log_pmf.items() if n * math.exp(lp) >= 5]
    expected = [n * math.exp(log_pmf[k]) for k in cells]
    got = [observed.get(k, 0) for k in cells]
    rest_expected, rest_got = n - sum(expected), n - sum(got)
    if rest_expected >= 5:
        expected.append(rest_expected)
        got.append(rest_got)
    else:  # fold a tiny tail into the last cell so both sums are n
        expected[-1] += rest_expected
        got[-1] += rest_got
    return float(stats.chisquare(got, expected).pvalue)


def test_secret_generators_differ_every_time():
    assert len({fresh_seed() for _ in range(50)}) == 50
    assert all(0 <= fresh_seed() < 2**63 for _ in range(20))
    a, b = secret_generator().random(8), secret_generator().random(8)
    assert not np.array_equal(a, b)
    assert isinstance(secure_random(), random.SystemRandom)
    assert stream_seed(None, stream=NOISE_STREAM) != stream_seed(None, stream=NOISE_STREAM)


def test_reproducible_streams_are_derived_and_distinct():
    assert stream_seed(7, stream=NOISE_STREAM) == stream_seed(7, stream=NOISE_STREAM)
    seeds = {
        stream_seed(7, stream=NOISE_STREAM),
        stream_seed(7, stream=SAMPLING_STREAM),
        stream_seed(8, stream=NOISE_STREAM),
        stream_seed(7, stream=NOISE_STREAM, words=(1,)),
        stream_seed(7, stream=SAMPLING_STREAM, words=(0, 100)),
    }
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)
    g1 = stream_generator(3, stream=NOISE_STREAM).random(4)
    assert np.array_equal(g1, stream_generator(3, stream=NOISE_STREAM).random(4))
    assert noise_random(3).random() == noise_random(3).random()
    assert isinstance(noise_random(None), random.SystemRandom)
    with pytest.raises(InvalidParameterError):
        stream_seed(-1, stream=NOISE_STREAM)


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(5, 2)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(gamma):
    rng = random.Random(11)
    n = 20_000
    hits = sum(sample_bernoulli_exp(gamma, rng) for _ in range(n))
    p = math.exp(-gamma)
    assert stats.binomtest(hits, n, p).pvalue > 1e-4


@pytest.mark.parametrize("scale", [1, 3])
def test_discrete_laplace_matches_its_pmf(scale):
    rng = random.Random(5)
    draws = [sample_discrete_laplace(scale, rng) for _ in range(20_000)]
    support = range(-60 * scale, 60 * scale + 1)
    log_w = {k: -abs(k) / scale for k in support}
    log_norm = float(np.logaddexp.reduce(list(log_w.values())))
    assert _chi_square_pvalue(draws, {k: v - log_norm for k, v in log_w.items()}) > 1e-4


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(1), Fraction(7, 2), 25.0])
def test_discrete_gaussian_matches_its_pmf(sigma2):
    rng = random.Random(3)
    draws = [sample_discrete_gaussian(sigma2, rng) for _ in range(20_000)]
    support = int(40 * math.sqrt(float(sigma2))) + 2
    values = np.arange(-support, support + 1)
    log_pmf = discrete_gaussian_log_pmf(values, sigma2=float(sigma2), support=support)
    assert (
        _chi_square_pvalue(draws, dict(zip(values.tolist(), log_pmf.tolist(), strict=True))) > 1e-4
    )


def test_the_reference_pmf_sums_to_one_and_has_the_right_variance():
    # Independent of the sampler: the exact pmf's mass and its variance, which for sigma^2 >= 1
    # is within 1e-9 of sigma^2 (Canonne, Kamath & Steinke 2020, Cor. 18: the gap is tiny).
    values = np.arange(-400, 401)
    pmf = np.exp(discrete_gaussian_log_pmf(values, sigma2=9.0, support=400))
    assert abs(pmf.sum() - 1.0) < 1e-12
    assert abs(float((values**2 * pmf).sum()) - 9.0) < 1e-9


@settings(max_examples=25, deadline=None)
@given(
    numerator=st.integers(min_value=1, max_value=400),
    denominator=st.integers(min_value=1, max_value=16),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_discrete_gaussian_moments_match_for_any_rational_variance(numerator, denominator, seed):
    sigma2 = Fraction(numerator, denominator)
    rng = random.Random(seed)
    n = 1500
    draws = np.asarray([sample_discrete_gaussian(sigma2, rng) for _ in range(n)], dtype=float)
    support = int(40 * math.sqrt(float(sigma2))) + 2
    values = np.arange(-support, support + 1)
    pmf = np.exp(discrete_gaussian_log_pmf(values, sigma2=float(sigma2), support=support))
    variance = float((values.astype(float) ** 2 * pmf).sum())
    fourth = float((values.astype(float) ** 4 * pmf).sum())
    # symmetric around 0 and variance of the exact pmf, each within 6 standard errors
    assert abs(draws.mean()) <= 6 * math.sqrt(variance / n) + 1e-12
    assert abs((draws**2).mean() - variance) <= 6 * math.sqrt((fourth - variance**2) / n) + 1e-12


def test_scaled_noise_is_integer_in_grid_units_with_the_scaled_variance():
    noise = discrete_gaussian_noise((400, 5), sigma=2.0, granularity=16, rng=random.Random(1))
    assert noise.dtype == np.int64 and noise.shape == (400, 5)
    sample_var = float(noise.astype(float).var())
    assert abs(sample_var / (2.0 * 16) ** 2 - 1.0) < 0.1  # 2000 draws: sd of the ratio ~0.03


def test_samplers_refuse_bad_parameters():
    rng = random.Random(0)
    for call in (
        lambda: sample_discrete_gaussian(0, rng),
        lambda: sample_discrete_laplace(0, rng),
        lambda: sample_bernoulli_exp(Fraction(-1), rng),
        lambda: discrete_gaussian_noise((2,), sigma=0.0, granularity=1, rng=rng),
        lambda: discrete_gaussian_noise((2,), sigma=1.0, granularity=0, rng=rng),
        lambda: discrete_gaussian_noise((2,), sigma=math.inf, granularity=1, rng=rng),
    ):
        with pytest.raises(InvalidParameterError):
            call()
