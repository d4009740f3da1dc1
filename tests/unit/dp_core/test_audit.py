"""Tests of dp_core.audit: the one-run audit bound (Steinke, Nasr & Jagielski 2023) and group RDP."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp_core.audit import (
    audit_epsilon_lower_bound,
    best_audit_over_guess_counts,
    group_privacy_rdp,
    guess_membership,
    one_run_p_value,
)
from dp_core.errors import InvalidParameterError


def exact_tail(r: int, v: int, p: Fraction) -> Fraction:
    """P[Binomial(r, p) >= v] in exact rational arithmetic (independent of scipy)."""
    return sum((math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(v, r + 1)), Fraction(0))


def exact_delta_term(m: int, r: int, v: int, p: Fraction, delta: Fraction) -> Fraction:
    """Theorem 3's delta term, 2 m delta max_i P[v-i <= X < v] / i, by direct summation."""
    pmf = [math.comb(r, j) * p**j * (1 - p) ** (r - j) for j in range(r + 1)]
    best = max(sum(pmf[v - i : v], Fraction(0)) / i for i in range(1, v + 1))
    return 2 * m * delta * best


@pytest.mark.parametrize(("r", "v"), [(1, 1), (5, 4), (10, 7), (20, 20), (30, 12)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
def test_pure_p_value_is_the_exact_binomial_tail(r, v, eps):
    p = Fraction(1 / (1 + math.exp(-eps)))
    got = one_run_p_value(epsilon=eps, delta=0.0, canaries=r, guesses=r, correct=v)
    assert got == pytest.approx(float(exact_tail(r, v, p)), rel=1e-12)


@pytest.mark.parametrize(("m", "r", "v"), [(10, 10, 9), (50, 20, 15), (100, 40, 40)])
def test_approximate_p_value_matches_direct_summation(m, r, v):
    eps, delta = 1.0, 1e-3
    p = Fraction(1 / (1 + math.exp(-eps)))
    exact = exact_tail(r, v, p) + exact_delta_term(m, r, v, p, Fraction(delta))
    got = one_run_p_value(epsilon=eps, delta=delta, canaries=m, guesses=r, correct=v)
    assert got == pytest.approx(min(float(exact), 1.0), rel=1e-12)


@pytest.mark.parametrize("r", [1, 10, 100, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_correct_pure_bound_has_a_closed_form(r, confidence):
    # P[Bin(r, p) >= r] = p^r <= beta  <=>  p <= beta^(1/r)  <=>  eps <= logit(beta^(1/r)).
    x = (1 - confidence) ** (1 / r)
    closed = max(math.log(x / (1 - x)), 0.0)  # eps >= 0: below 0 nothing is rejected
    got = audit_epsilon_lower_bound(canaries=r, guesses=r, correct=r, confidence=confidence)
    assert got.epsilon == pytest.approx(closed, rel=1e-9)
    assert got.epsilon <= closed * (1 + 1e-12)


def test_bound_is_rounded_down():
    # The p-value at the reported eps is <= beta: the bound never claims more leakage.
    for r, v in [(50, 40), (200, 150), (1000, 1000)]:
        b = audit_epsilon_lower_bound(canaries=r, guesses=r, correct=v, confidence=0.95)
        assert b.p_value <= 0.05
        worse = one_run_p_value(
            epsilon=b.epsilon + 1e-9, delta=0.0, canaries=r, guesses=r, correct=v
        )
        assert worse > 0.05 - 1e-12


def test_no_evidence_gives_zero():
    assert audit_epsilon_lower_bound(canaries=100, guesses=100, correct=50).epsilon == 0.0
    assert audit_epsilon_lower_bound(canaries=100, guesses=0, correct=0).epsilon == 0.0
    assert audit_epsilon_lower_bound(canaries=4, guesses=4, correct=4).epsilon == 0.0  # 2^-4 > 0.05


def test_delta_only_lowers_the_bound():
    pure = audit_epsilon_lower_bound(canaries=1000, guesses=200, correct=190)
    approx = audit_epsilon_lower_bound(canaries=1000, guesses=200, correct=190, delta=1e-5)
    big = audit_epsilon_lower_bound(canaries=1000, guesses=200, correct=190, delta=1e-3)
    assert big.epsilon < approx.epsilon <= pure.epsilon
    # A delta so large that 2 m delta alone exceeds beta makes any eps unrejectable.
    assert (
        audit_epsilon_lower_bound(canaries=1000, guesses=200, correct=190, delta=0.01).epsilon
        == 0.0
    )


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 300), data=st.data())
def test_more_correct_guesses_never_lower_the_bound(r, data):
    v = data.draw(st.integers(0, r - 1))
    delta = data.draw(st.sampled_from([0.0, 1e-6, 1e-4]))
    m = data.draw(st.integers(r, 3 * r))
    lo = audit_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta)
    hi = audit_epsilon_lower_bound(canaries=m, guesses=r, correct=v + 1, delta=delta)
    assert hi.epsilon >= lo.epsilon


@settings(max_examples=30, deadline=None)
@given(r=st.integers(1, 300), frac=st.floats(0.0, 1.0), c=st.sampled_from([0.8, 0.95, 0.99]))
def test_higher_confidence_never_raises_the_bound(r, frac, c):
    v = round(frac * r)
    a = audit_epsilon_lower_bound(canaries=r, guesses=r, correct=v, confidence=c)
    b = audit_epsilon_lower_bound(
        canaries=r, guesses=r, correct=v, confidence=min(c + 0.009, 0.999)
    )
    assert b.epsilon <= a.epsilon


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0, 4.0])
def test_bound_stays_below_randomized_response_epsilon(eps):
    # m canaries, each in with prob 1/2; the mechanism reveals each membership bit through
    # eps-DP randomized response. The one-run bound must exceed eps in at most beta of trials.
    rng = np.random.default_rng(int(eps * 100))
    m, trials, beta = 400, 200, 0.05
    keep = 1 / (1 + math.exp(-eps))
    above = 0
    bounds = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        truthful = rng.random(m) < keep
        released = np.where(truthful, included, ~included)
        scores = released.astype(float) + rng.random(m) * 1e-3  # random tie-breaking
        b = best_audit_over_guess_counts(
            scores, included, guess_counts=(m // 2,), confidence=1 - beta
        )
        bounds.append(b.epsilon)
        above += b.epsilon > eps
    # Bin(200, 0.05) exceeds 20 with probability < 0.002.
    assert above <= 20
    assert np.median(bounds) > 0.5 * eps  # and it is not vacuous


def test_guess_membership_picks_extremes():
    g = guess_membership([0.1, 5.0, -3.0, 2.0, 0.0], k_plus=2, k_minus=1)
    assert g.tolist() == [0, 1, -1, 1, 0]
    with pytest.raises(InvalidParameterError):
        guess_membership([1.0, 2.0], k_plus=2, k_minus=1)
    with pytest.raises(InvalidParameterError):
        guess_membership([1.0, float("nan")], k_plus=1, k_minus=0)


def test_bonferroni_costs_confidence():
    rng = np.random.default_rng(0)
    included = rng.random(500) < 0.5
    scores = included + rng.normal(0, 0.5, 500)
    one = best_audit_over_guess_counts(scores, included, guess_counts=(50,))
    many = best_audit_over_guess_counts(scores, included, guess_counts=(50, 50, 50, 50))
    assert many.epsilon < one.epsilon
    assert many.confidence == one.confidence == 0.95


def test_invalid_counts_are_refused():
    with pytest.raises(InvalidParameterError):
        audit_epsilon_lower_bound(canaries=10, guesses=11, correct=3)
    with pytest.raises(InvalidParameterError):
        audit_epsilon_lower_bound(canaries=10, guesses=5, correct=6)
    with pytest.raises(InvalidParameterError):
        audit_epsilon_lower_bound(canaries=10, guesses=5, correct=5, confidence=1.0)


def test_group_privacy_rdp_is_mironov_prop_2():
    orders = np.array([1.5, 2.0, 4.0, 8.0, 16.0, 32.0])
    rdp = orders * 0.01  # a Gaussian-like curve
    g2 = group_privacy_rdp(orders=orders, rdp=rdp, group_size=2)
    # c = 1: orders alpha >= 4 map to alpha / 2 with 3 * eps.
    np.testing.assert_allclose(g2.orders, [2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(g2.rdp, 3 * np.array([0.04, 0.08, 0.16, 0.32]))
    g3 = group_privacy_rdp(orders=orders, rdp=rdp, group_size=3)  # rounds up to 4 = 2^2
    assert g3.doublings == 2
    np.testing.assert_allclose(g3.orders, [2.0, 4.0, 8.0])
    np.testing.assert_allclose(g3.rdp, 9 * np.array([0.08, 0.16, 0.32]))
    same = group_privacy_rdp(orders=orders, rdp=rdp, group_size=1)
    np.testing.assert_array_equal(same.rdp, rdp)


def test_group_privacy_is_at_least_exact_gaussian_group_rdp():
    # For the Gaussian mechanism, groups of K have exact RDP alpha K^2 / (2 sigma^2); the
    # generic bound (3^c at alpha / 2^c of the one-record curve) can only be looser.
    sigma = 2.0
    orders = np.arange(2.0, 257.0)
    rdp = orders / (2 * sigma**2)
    for k in (2, 4, 8):
        g = group_privacy_rdp(orders=orders, rdp=rdp, group_size=k)
        assert np.all(g.rdp >= g.orders * k**2 / (2 * sigma**2) - 1e-12)


def test_group_privacy_refuses_bad_input():
    with pytest.raises(InvalidParameterError):
        group_privacy_rdp(orders=[1.5, 2.0], rdp=[0.1, 0.2], group_size=2)
    with pytest.raises(InvalidParameterError):
        group_privacy_rdp(orders=[4.0], rdp=[0.1], group_size=0)


def test_loss_threshold_attack_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score, roc_curve

    from dp_core.audit import loss_threshold_attack

    rng = np.random.default_rng(3)
    members = rng.exponential(0.5, 700).round(2)  # rounding makes ties
    others = rng.exponential(1.0, 300).round(2)
    report = loss_threshold_attack(members, others)
    labels = np.r_[np.ones(700), np.zeros(300)]
    scores = -np.r_[members, others]
    assert report.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    for target, got in report.tpr_at_fpr.items():
        assert got == pytest.approx(tpr[fpr <= target + 1e-12].max(), abs=1e-12)


def test_loss_threshold_attack_extremes():
    from dp_core.audit import loss_threshold_attack

    separated = loss_threshold_attack([0.0, 0.1, 0.2], [1.0, 2.0, 3.0, 4.0])
    assert separated.auc == 1.0
    assert separated.tpr_at_fpr[0.001] == 1.0
    same = loss_threshold_attack([1.0] * 5, [1.0] * 5)
    assert same.auc == 0.5
    assert same.tpr_at_fpr[0.1] == 0.0
