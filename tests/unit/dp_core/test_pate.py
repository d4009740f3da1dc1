"""PATE: records, aggregator distribution, RDP bounds against independent oracles, the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

import dp_core
from dp_core import (
    Composed,
    Gaussian,
    GNMaxQueries,
    Laplace,
    LNMaxQueries,
    PoissonSampled,
    RdpAccountant,
    Repeated,
    aggregate_votes,
    analyze_votes,
    pate_mechanism,
    votes_from_predictions,
)
from dp_core.errors import InvalidParameterError, UnsupportedMechanismError
from dp_core.mechanisms import mechanism_from_dict, mechanism_to_dict
from dp_core.pate import validate_votes
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.gaussian import rdp_gaussian
from dp_core.rdp.laplace import rdp_laplace
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.rdp.pate import (
    log_q_gnmax,
    log_q_lnmax,
    rdp_gnmax,
    rdp_gnmax_data_dependent,
    rdp_lnmax,
    rdp_lnmax_data_dependent,
    rdp_pure_dp,
)
from tests.unit.dp_core.oracles import rdp_laplace_quad

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ORDERS = np.array([1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0])
PATE_MECHANISMS = [
    GNMaxQueries(noise_multiplier=40.0, queries=300),
    LNMaxQueries(noise_scale=20.0, queries=7),
    GNMaxQueries(noise_multiplier=2.5),
]


# --- records: validation, codec, dispatch table, accountant -----------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: GNMaxQueries(noise_multiplier=0.0, queries=1),
        lambda: GNMaxQueries(noise_multiplier=float("nan"), queries=1),
        lambda: GNMaxQueries(noise_multiplier=1.0, queries=-1),
        lambda: GNMaxQueries(noise_multiplier=1.0, queries=1.5),
        lambda: LNMaxQueries(noise_scale=-1.0, queries=1),
        lambda: LNMaxQueries(noise_scale=True, queries=1),
        lambda: pate_mechanism("maxmax", noise_multiplier=1.0, queries=1),
    ],
)
def test_invalid_records_are_refused(build):
    with pytest.raises(InvalidParameterError):
        build()


@pytest.mark.parametrize("mechanism", PATE_MECHANISMS, ids=repr)
def test_json_round_trip_also_nested(mechanism):
    for m in (mechanism, Repeated(count=3, inner=mechanism), Composed((Gaussian(2.0), mechanism))):
        assert mechanism_from_dict(mechanism_to_dict(m)) == m


def test_dispatch_table_and_accountant():
    a = np.array([2.0, 10.0])
    assert compute_rdp(GNMaxQueries(noise_multiplier=4.0, queries=3), a) == pytest.approx(
        3 * a / 16.0, rel=1e-15
    )
    assert compute_rdp(
        Repeated(count=2, inner=LNMaxQueries(noise_scale=5.0, queries=3)), a
    ) == pytest.approx(6 * rdp_lnmax(noise_scale=5.0, orders=a), rel=1e-15)
    assert np.all(compute_rdp(GNMaxQueries(noise_multiplier=4.0, queries=0), a) == 0.0)
    accountant = RdpAccountant()
    accountant.compose(GNMaxQueries(noise_multiplier=40.0, queries=300))
    accountant.compose(LNMaxQueries(noise_scale=20.0, queries=10), count=2)
    restored = RdpAccountant.from_json(accountant.to_json())
    assert np.array_equal(restored.rdp, accountant.rdp)
    assert restored.get_epsilon(1e-5).epsilon == accountant.get_epsilon(1e-5).epsilon
    with pytest.raises(UnsupportedMechanismError):
        accountant.compose(
            PoissonSampled(sample_rate=0.1, inner=GNMaxQueries(noise_multiplier=40.0, queries=1))
        )
    assert len(accountant.entries) == 2  # validate-then-mutate


def test_releases_map_to_the_existing_mechanisms():
    assert dp_core.mechanism_for_gaussian_release(sensitivity=2.0, noise_std=6.0) == Gaussian(3.0)
    assert dp_core.mechanism_for_laplace_release(sensitivity=0.5, noise_scale=2.0) == Laplace(4.0)
    with pytest.raises(InvalidParameterError, match="sensitivity"):
        dp_core.mechanism_for_gaussian_release(sensitivity=0.0, noise_std=1.0)
    with pytest.raises(InvalidParameterError, match="noise_scale"):
        dp_core.mechanism_for_laplace_release(sensitivity=1.0, noise_scale=-1.0)


# --- votes --------------------------------------------------------------------------------------


def test_votes_from_predictions_counts_every_teacher():
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 4, size=(9, 13))
    votes = votes_from_predictions(predictions, num_classes=5)
    expected = np.array([[np.sum(predictions[:, q] == c) for c in range(5)] for q in range(13)])
    assert np.array_equal(votes, expected) and votes.sum() == predictions.size
    assert votes_from_predictions(predictions).shape == (13, 4)


@pytest.mark.parametrize(
    ("predictions", "num_classes"),
    [([[0, 1], [2, 5]], 3), ([[0, -1]], None), ([[0.5, 1]], None), ([0, 1], None), ([[0]], 1)],
)
def test_bad_predictions(predictions, num_classes):
    with pytest.raises(InvalidParameterError):
        votes_from_predictions(predictions, num_classes=num_classes)


@pytest.mark.parametrize(
    "votes",
    [[1, 2, 3], [[1], [2]], [[1, -1]], [[1.5, 2]], [[np.nan, 1]], [[np.inf, 1]], "abc", [[0, 1, 2]] * 0],
)  # fmt: skip
def test_bad_votes(votes):
    with pytest.raises(InvalidParameterError, match="votes"):
        validate_votes(votes)


def test_queries_must_match_the_votes_and_seed_must_be_valid():
    votes = np.array([[3, 1], [0, 4]])
    with pytest.raises(InvalidParameterError, match="queries"):
        aggregate_votes(votes, GNMaxQueries(noise_multiplier=1.0, queries=3), seed=0)
    with pytest.raises(InvalidParameterError, match="queries"):
        analyze_votes(votes, GNMaxQueries(noise_multiplier=1.0, queries=1), delta=1e-5)
    with pytest.raises(InvalidParameterError, match="seed"):
        aggregate_votes(votes, GNMaxQueries(noise_multiplier=1.0, queries=2), seed=-1)
    with pytest.raises(InvalidParameterError, match="delta"):
        analyze_votes(votes, GNMaxQueries(noise_multiplier=1.0, queries=2), delta=0.0)


# --- the aggregator's output distribution -------------------------------------------------------


def test_seeded_aggregation_is_reproducible():
    votes = np.tile([10, 9, 8, 0], (200, 1))
    mechanism = GNMaxQueries(noise_multiplier=3.0, queries=200)
    first = aggregate_votes(votes, mechanism, seed=7)
    assert np.array_equal(first, aggregate_votes(votes, mechanism, seed=7))
    assert not np.array_equal(first, aggregate_votes(votes, mechanism, seed=8))
    assert first.dtype == np.int64 and set(np.unique(first)) <= {0, 1, 2, 3}


def _lap_diff_sf(t: float, b: float) -> float:
    """Pr[X - Y > t] for X, Y ~ Lap(b) independent, t >= 0 (density convolution, by hand)."""
    return 0.5 * math.exp(-t / b) * (1.0 + t / (2.0 * b))


@pytest.mark.parametrize(
    ("mechanism", "gap", "exact"),
    [
        (
            GNMaxQueries(noise_multiplier=2.0, queries=20_000),
            3,
            stats.norm.sf(3, scale=2.0 * math.sqrt(2.0)),
        ),
        (
            GNMaxQueries(noise_multiplier=5.0, queries=20_000),
            12,
            stats.norm.sf(12, scale=5.0 * math.sqrt(2.0)),
        ),
        (LNMaxQueries(noise_scale=2.0, queries=20_000), 3, _lap_diff_sf(3, 2.0)),
        (LNMaxQueries(noise_scale=4.0, queries=20_000), 12, _lap_diff_sf(12, 4.0)),
    ],
    ids=["gnmax-small-gap", "gnmax-large-gap", "lnmax-small-gap", "lnmax-large-gap"],
)
def test_two_class_disagreement_rate_matches_the_exact_probability(mechanism, gap, exact):
    votes = np.tile([gap + 5, 5], (mechanism.queries, 1))
    labels = aggregate_votes(votes, mechanism, seed=11)
    empirical = np.mean(labels != 0)
    se = math.sqrt(exact * (1 - exact) / mechanism.queries)
    assert abs(empirical - exact) < 5 * se
    # For two classes the union bound of Prop. 7 / Lemma 4 is the exact probability.
    log_q = (log_q_gnmax if isinstance(mechanism, GNMaxQueries) else log_q_lnmax)(
        votes[:1], **{k: v for k, v in vars(mechanism).items() if k != "queries"}
    )
    assert math.exp(log_q[0]) == pytest.approx(exact, rel=1e-12)


def _win_probabilities_gnmax(votes: np.ndarray, sigma: float) -> np.ndarray:
    """Pr[class i is the noisy argmax] by quadrature: int phi(x - n_i) prod_j Phi((x - n_j)/s)."""
    probabilities = []
    for i, n_i in enumerate(votes):
        others = np.delete(votes, i)

        def integrand(x, n_i=n_i, others=others):
            return stats.norm.pdf(x, loc=n_i, scale=sigma) * np.prod(
                stats.norm.cdf(x, loc=others, scale=sigma)
            )

        lo, hi = n_i - 12 * sigma, n_i + 12 * sigma
        p, _ = integrate.quad(integrand, lo, hi, points=[n_i], epsabs=0.0, epsrel=1e-11, limit=200)
        probabilities.append(p)
    return np.array(probabilities)


def test_many_classes_disagreement_respects_prop7_and_the_exact_rate():
    votes = np.array([30, 18, 15, 12, 5])
    sigma, draws = 5.0, 40_000
    labels = aggregate_votes(
        np.tile(votes, (draws, 1)), GNMaxQueries(noise_multiplier=sigma, queries=draws), seed=3
    )
    exact = 1.0 - _win_probabilities_gnmax(votes, sigma)[0]
    bound = math.exp(log_q_gnmax(votes[None, :], noise_multiplier=sigma)[0])
    assert exact <= bound
    se = math.sqrt(exact * (1 - exact) / draws)
    assert abs(np.mean(labels != 0) - exact) < 5 * se


def test_unanimous_votes_with_little_noise_always_return_the_plurality():
    votes = np.zeros((500, 10))
    votes[:, 4] = 250
    assert np.all(
        aggregate_votes(votes, GNMaxQueries(noise_multiplier=20.0, queries=500), seed=0) == 4
    )


# --- data-independent RDP against independent oracles -------------------------------------------


def _rdp_gaussian_quad(sigma: float, alpha: float) -> float:
    """D_alpha(N(0, s^2) || N(1, s^2)) by quadrature, scaled by the integrand's peak (log space)."""

    def log_integrand(x):
        return alpha * stats.norm.logpdf(x, scale=sigma) + (1 - alpha) * stats.norm.logpdf(
            x, loc=1.0, scale=sigma
        )

    peak = 1.0 - alpha  # alpha * 0 + (1 - alpha) * 1: where the tilted integrand peaks
    log_peak = log_integrand(peak)
    total, _ = integrate.quad(
        lambda x: math.exp(log_integrand(x) - log_peak),
        peak - 40 * sigma,
        peak + 40 * sigma,
        points=[peak],
        epsabs=0.0,
        epsrel=1e-12,
        limit=200,
    )
    return (log_peak + math.log(total)) / (alpha - 1)


@pytest.mark.parametrize("sigma", [0.8, 4.0, 40.0])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 8.0, 32.0])
def test_gnmax_rdp_is_two_coordinates_of_the_gaussian(sigma, alpha):
    """Prop. 8: alpha/sigma^2 = the Gaussian RDP of the two moved counts (quadrature)."""
    value = rdp_gnmax(noise_multiplier=sigma, orders=np.array([alpha]))[0]
    assert value == pytest.approx(alpha / sigma**2, rel=1e-15)
    assert value == pytest.approx(2 * _rdp_gaussian_quad(sigma, alpha), rel=1e-8)
    assert value == pytest.approx(
        rdp_gaussian(noise_multiplier=sigma / math.sqrt(2), orders=np.array([alpha]))[0]
    )


@pytest.mark.parametrize("b", [0.5, 2.0, 10.0, 40.0])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 8.0, 32.0])
def test_lnmax_rdp_against_quadrature_of_the_laplace_divergence(b, alpha):
    value = rdp_lnmax(noise_scale=b, orders=np.array([alpha]))[0]
    assert value == pytest.approx(2 * rdp_laplace_quad(b, alpha), rel=1e-7)


def _rdp_randomized_response(eps: float, alpha: float) -> float:
    """D_alpha(Bern(e^eps/(1+e^eps)) || Bern(1/(1+e^eps))), summed directly."""
    p, q = math.exp(eps) / (1 + math.exp(eps)), 1 / (1 + math.exp(eps))
    return math.log(p**alpha * q ** (1 - alpha) + q**alpha * p ** (1 - alpha)) / (alpha - 1)


@pytest.mark.parametrize("eps", [0.01, 0.2, 1.0, 4.0])
def test_pure_dp_conversion_is_randomized_response_and_below_the_classic_bounds(eps):
    orders = np.array([1.1, 2.0, 5.0, 20.0, 100.0])
    values = rdp_pure_dp(epsilon=eps, orders=orders)
    for a, v in zip(orders, values, strict=True):
        assert v == pytest.approx(_rdp_randomized_response(eps, a), rel=1e-9, abs=1e-15)
    assert np.all(values <= eps) and np.all(values <= orders * eps**2 / 2 * (1 + 1e-12))


@pytest.mark.parametrize("b", [0.5, 1.0, 5.0, 20.0, 100.0])
def test_lnmax_rdp_beats_the_2017_moments_bound_and_tends_to_2_over_b(b):
    """Papernot 2017, Thm. 3: log moment 2 gamma^2 l (l+1), i.e. RDP 2 gamma^2 alpha; and pure 2/b."""
    values = rdp_lnmax(noise_scale=b, orders=DEFAULT_ORDERS)
    assert np.all(values <= 2 * DEFAULT_ORDERS / b**2)
    assert np.all(values <= 2 / b) and np.all(np.diff(values) >= -1e-15)
    assert rdp_lnmax(noise_scale=b, orders=np.array([1e7]))[0] == pytest.approx(2 / b, rel=1e-3)
    # The vector-Laplace bound is the tighter of the two on the whole grid.
    assert np.array_equal(values, 2 * rdp_laplace(noise_scale=b, orders=DEFAULT_ORDERS))


# --- data-dependent RDP -------------------------------------------------------------------------


def _theorem6_reference(q: float, sigma: float, alpha: float) -> float:
    """Papernot et al. 2018, Thm. 6 + Prop. 10 transcribed with plain floats (no log space)."""
    data_independent = alpha / sigma**2
    mu2 = sigma * math.sqrt(math.log(1 / q))
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    in_range = q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1)) ** mu2
    if not (mu2 > 1 and alpha < mu1 and q * math.exp(eps2) < 1 and in_range):
        return data_independent
    big_a = (1 - q) / (1 - (q * math.exp(eps2)) ** ((mu2 - 1) / mu2))
    big_b = math.exp(eps1) / q ** (1 / (mu1 - 1))
    bound = math.log((1 - q) * big_a ** (alpha - 1) + q * big_b ** (alpha - 1)) / (alpha - 1)
    return min(data_independent, bound)


def _theorem2_reference(q: float, b: float, alpha: float) -> float:
    """Papernot et al. 2017, Thm. 2 transcribed with plain floats, as RDP at order l + 1."""
    eps, l = 2 / b, alpha - 1  # noqa: E741
    data_independent = rdp_lnmax(noise_scale=b, orders=np.array([alpha]))[0]
    if not q < (math.exp(eps) - 1) / (math.exp(2 * eps) - 1):
        return data_independent
    moment = math.log((1 - q) * ((1 - q) / (1 - math.exp(eps) * q)) ** l + q * math.exp(eps * l))
    return min(data_independent, moment / l)


@pytest.mark.parametrize("q", [1e-12, 1e-6, 1e-3, 0.05, 0.3])
@pytest.mark.parametrize("sigma", [2.0, 10.0, 40.0])
def test_gnmax_data_dependent_matches_a_plain_transcription(q, sigma):
    orders = np.array([1.5, 2.0, 4.0, 8.0, 16.0, 32.0])
    ours = rdp_gnmax_data_dependent(log_q=math.log(q), noise_multiplier=sigma, orders=orders)
    expected = [_theorem6_reference(q, sigma, a) for a in orders]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-14)  # plain floats: ~1e-16 absolute


@pytest.mark.parametrize("q", [1e-12, 1e-6, 1e-3, 0.05, 0.3])
@pytest.mark.parametrize("b", [0.5, 2.0, 10.0])
def test_lnmax_data_dependent_matches_a_plain_transcription(q, b):
    orders = np.array([1.5, 2.0, 4.0, 8.0, 16.0])
    ours = rdp_lnmax_data_dependent(log_q=math.log(q), noise_scale=b, orders=orders)
    expected = [_theorem2_reference(q, b, a) for a in orders]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-14)  # plain floats: ~1e-16 absolute


def _exact_divergence(log_p: np.ndarray, log_p_neighbour: np.ndarray, alpha: float) -> float:
    terms = alpha * log_p + (1 - alpha) * log_p_neighbour
    return float(np.logaddexp.reduce(terms) / (alpha - 1))


def _two_class_log_probabilities(votes: np.ndarray, mechanism) -> np.ndarray:
    """log Pr[class 0], log Pr[class 1] of the noisy argmax, in closed form."""
    gap = float(votes[0] - votes[1])
    if isinstance(mechanism, GNMaxQueries):
        scale = mechanism.noise_multiplier * math.sqrt(2)
        return np.array([stats.norm.logcdf(gap, scale=scale), stats.norm.logsf(gap, scale=scale)])
    tail = math.log(_lap_diff_sf(abs(gap), mechanism.noise_scale))
    body = math.log1p(-math.exp(tail))
    return np.array([body, tail] if gap >= 0 else [tail, body])


def _neighbours(votes: np.ndarray):
    for i in range(votes.size):
        for j in range(votes.size):
            if i != j and votes[i] > 0:
                moved = votes.copy()
                moved[i] -= 1
                moved[j] += 1
                yield moved


@pytest.mark.parametrize(
    ("mechanism", "votes"),
    [
        (GNMaxQueries(noise_multiplier=4.0), np.array([30, 2])),
        (GNMaxQueries(noise_multiplier=3.0), np.array([20, 4])),
        (LNMaxQueries(noise_scale=2.0), np.array([40, 1])),
        (LNMaxQueries(noise_scale=1.0), np.array([15, 3])),
    ],
    ids=["gnmax-4", "gnmax-3", "lnmax-2", "lnmax-1"],
)
def test_data_dependent_bounds_hold_for_the_exact_two_class_divergence(mechanism, votes):
    """Every neighbour's exact Renyi divergence stays below the data-dependent bound."""
    orders = np.array([1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0])
    log_q = (log_q_gnmax if isinstance(mechanism, GNMaxQueries) else log_q_lnmax)(
        votes[None, :], **{k: v for k, v in vars(mechanism).items() if k != "queries"}
    )
    if isinstance(mechanism, GNMaxQueries):
        bound = rdp_gnmax_data_dependent(
            log_q=log_q, noise_multiplier=mechanism.noise_multiplier, orders=orders
        )[0]
        independent = rdp_gnmax(noise_multiplier=mechanism.noise_multiplier, orders=orders)
    else:
        bound = rdp_lnmax_data_dependent(
            log_q=log_q, noise_scale=mechanism.noise_scale, orders=orders
        )[0]
        independent = rdp_lnmax(noise_scale=mechanism.noise_scale, orders=orders)
    assert np.any(bound < 0.5 * independent)  # the data-dependent bound is active here
    log_p = _two_class_log_probabilities(votes, mechanism)
    for neighbour in _neighbours(votes):
        log_p_neighbour = _two_class_log_probabilities(neighbour, mechanism)
        for k, alpha in enumerate(orders):
            exact = _exact_divergence(log_p, log_p_neighbour, alpha)
            assert exact <= bound[k] * (1 + 1e-9) + 1e-15
            assert exact <= independent[k] * (1 + 1e-9)


def test_gnmax_data_dependent_bound_holds_for_three_classes_by_quadrature():
    votes, sigma = np.array([24, 6, 2]), 4.0
    orders = np.array([2.0, 4.0, 8.0, 12.0])
    log_q = log_q_gnmax(votes[None, :], noise_multiplier=sigma)
    bound = rdp_gnmax_data_dependent(log_q=log_q, noise_multiplier=sigma, orders=orders)[0]
    assert np.any(bound < 0.1 * rdp_gnmax(noise_multiplier=sigma, orders=orders))
    log_p = np.log(_win_probabilities_gnmax(votes, sigma))
    for neighbour in _neighbours(votes):
        log_p_neighbour = np.log(_win_probabilities_gnmax(neighbour, sigma))
        for k, alpha in enumerate(orders):
            assert _exact_divergence(log_p, log_p_neighbour, alpha) <= bound[k]


@FAST
@given(
    log_q=st.floats(-2000.0, math.log(0.9)),
    noise=st.floats(0.3, 200.0),
    lnmax=st.booleans(),
)
def test_data_dependent_never_exceeds_data_independent(log_q, noise, lnmax):
    if lnmax:
        dependent = rdp_lnmax_data_dependent(log_q=log_q, noise_scale=noise, orders=DEFAULT_ORDERS)
        independent = rdp_lnmax(noise_scale=noise, orders=DEFAULT_ORDERS)
    else:
        dependent = rdp_gnmax_data_dependent(
            log_q=log_q, noise_multiplier=noise, orders=DEFAULT_ORDERS
        )
        independent = rdp_gnmax(noise_multiplier=noise, orders=DEFAULT_ORDERS)
    assert np.all(np.isfinite(dependent)) and np.all(dependent >= 0.0)
    assert np.all(dependent <= independent)


def test_certain_answers_cost_nothing_data_dependently():
    zero = rdp_gnmax_data_dependent(log_q=-np.inf, noise_multiplier=1.0, orders=ORDERS)
    assert np.all(zero == 0.0)
    zero = rdp_lnmax_data_dependent(log_q=-np.inf, noise_scale=1.0, orders=ORDERS)
    assert np.all(zero == 0.0)


# --- the report ---------------------------------------------------------------------------------


def _votes(rng: np.random.Generator, queries: int, top: int, classes: int = 10) -> np.ndarray:
    votes = rng.integers(0, 6, size=(queries, classes))
    votes[np.arange(queries), rng.integers(0, classes, size=queries)] = top
    return votes


@pytest.mark.parametrize("aggregator", ["gnmax", "lnmax"])
def test_large_margins_give_a_much_smaller_data_dependent_epsilon(aggregator):
    votes = _votes(np.random.default_rng(0), 300, top=200)
    noise = 40.0 if aggregator == "gnmax" else 20.0
    mechanism = pate_mechanism(aggregator, noise_multiplier=noise, queries=300)
    report = analyze_votes(votes, mechanism, delta=1e-5)
    assert report.aggregator == aggregator and report.delta == 1e-5
    assert report.epsilon_data_dependent < 0.5 * report.epsilon_data_independent
    independent = RdpAccountant()
    independent.compose(mechanism)
    assert report.epsilon_data_independent == pytest.approx(
        independent.get_epsilon(1e-5).epsilon, rel=1e-12
    )


@pytest.mark.parametrize("aggregator", ["gnmax", "lnmax"])
def test_weak_consensus_falls_back_to_the_data_independent_epsilon(aggregator):
    votes = np.full((100, 10), 25)
    votes[:, 3] += 1
    mechanism = pate_mechanism(aggregator, noise_multiplier=30.0, queries=100)
    report = analyze_votes(votes, mechanism, delta=1e-5)
    assert report.epsilon_data_dependent == pytest.approx(report.epsilon_data_independent, rel=1e-6)


def test_every_row_is_analysed_not_rows_indexed_by_label_values():
    """Regression for PySyft's perform_analysis, which reads label values as row indices."""
    unanimous = np.zeros((20, 10), dtype=int)
    unanimous[:, 0] = 250
    split = np.full((10, 10), 25)
    mixed = np.vstack([unanimous[:10], split])
    mechanism = GNMaxQueries(noise_multiplier=40.0, queries=20)
    only_first_rows = analyze_votes(unanimous, mechanism, delta=1e-5)
    report = analyze_votes(mixed, mechanism, delta=1e-5)
    assert report.epsilon_data_dependent > 2 * only_first_rows.epsilon_data_dependent
    shuffled = mixed[np.random.default_rng(0).permutation(20)]
    assert analyze_votes(shuffled, mechanism, delta=1e-5).epsilon_data_dependent == pytest.approx(
        report.epsilon_data_dependent, rel=1e-12
    )


def test_no_queries_cost_nothing():
    report = analyze_votes(
        np.zeros((0, 3)), GNMaxQueries(noise_multiplier=1.0, queries=0), delta=1e-5
    )
    assert report.epsilon_data_independent == 0.0 and report.epsilon_data_dependent == 0.0
    assert aggregate_votes(
        np.zeros((0, 3)), GNMaxQueries(noise_multiplier=1.0, queries=0), seed=0
    ).shape == (0,)


@FAST
@given(
    noise=st.floats(2.0, 100.0),
    factor=st.floats(1.01, 3.0),
    queries=st.integers(1, 2000),
    aggregator=st.sampled_from(["gnmax", "lnmax"]),
)
def test_more_noise_less_epsilon_more_queries_more_epsilon(noise, factor, queries, aggregator):
    def epsilon(noise, queries):
        accountant = RdpAccountant()
        accountant.compose(pate_mechanism(aggregator, noise_multiplier=noise, queries=queries))
        return accountant.get_epsilon(1e-5, warn=False).epsilon

    base = epsilon(noise, queries)
    assert epsilon(noise * factor, queries) <= base
    assert epsilon(noise, queries + 1) >= base


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    extra=st.integers(1, 20),
    noise=st.floats(1.0, 50.0),
    aggregator=st.sampled_from(["gnmax", "lnmax"]),
)
def test_more_queries_never_lower_the_data_dependent_epsilon(seed, extra, noise, aggregator):
    rng = np.random.default_rng(seed)
    votes = _votes(rng, 30 + extra, top=int(rng.integers(0, 100)), classes=4)

    def report(rows):
        mechanism = pate_mechanism(aggregator, noise_multiplier=noise, queries=rows)
        return analyze_votes(votes[:rows], mechanism, delta=1e-5, warn=False)

    fewer, more = report(30), report(30 + extra)
    assert more.epsilon_data_dependent >= fewer.epsilon_data_dependent * (1 - 1e-6)
    assert more.epsilon_data_dependent <= more.epsilon_data_independent


# --- secret, exact noise (issue 20) -------------------------------------------------------------


@pytest.mark.parametrize(
    "mechanism",
    [GNMaxQueries(noise_multiplier=3.0, queries=300), LNMaxQueries(noise_scale=3.0, queries=300)],
)
def test_same_votes_twice_give_different_labels_without_a_seed(mechanism):
    votes = np.tile([10, 9, 0], (300, 1))  # close call: about half the answers flip
    first, second = aggregate_votes(votes, mechanism), aggregate_votes(votes, mechanism)
    assert not np.array_equal(first, second)


def test_gnmax_noise_is_integer_on_the_fine_grid_with_std_sigma():
    from dp_core.pate import GNMAX_GRANULARITY, _discrete_gaussian_counts

    counts = np.tile(np.array([3.0, 0.0]), (2000, 1))
    noisy = _discrete_gaussian_counts(counts, 2.5, 9)
    assert noisy.dtype == np.int64
    noise = (noisy - counts.astype(np.int64) * GNMAX_GRANULARITY) / GNMAX_GRANULARITY
    assert abs(float(noise.std()) / 2.5 - 1.0) < 5 / math.sqrt(2 * noise.size)
    assert abs(float(noise.mean())) < 5 * 2.5 / math.sqrt(noise.size)
    assert np.array_equal(noisy, _discrete_gaussian_counts(counts, 2.5, 9))  # seeded: reproducible
