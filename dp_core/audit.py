"""Empirical privacy auditing in one training run, and group privacy for RDP.

The one-run audit of Steinke, Nasr & Jagielski 2023 ("Privacy Auditing with One (1) Training
Run", NeurIPS 2023): m canaries are each included in the training data independently with
probability 1/2; after one run the auditor scores every canary, guesses "in" for the k+ highest
scores and "out" for the k- lowest (abstaining on the rest), and counts the v correct guesses
among the r = k+ + k- made. Their Theorem 1 (pure DP) bounds the number of correct guesses of an
eps-DP mechanism by a binomial tail; Theorem 3 (approximate DP) adds a term in delta, computed
by their Algorithm 2 (appendix). Rejecting the null hypothesis "the mechanism is (eps, delta)-DP"
at level beta for the largest such eps gives an epsilon *lower bound* at confidence 1 - beta.

Everything is exact: binomial tails come from :mod:`scipy.stats.binom` (regularized incomplete
beta, never a normal approximation), and the reported bound is the low end of a bisection on
eps, so it is rounded down (towards claiming less leakage).

Group privacy: Mironov 2017 ("Renyi Differential Privacy"), Proposition 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from dp_core.errors import InvalidParameterError
from dp_core.group import group_exponent
from dp_core.validation import finite_float, non_negative_int, probability

__all__ = [
    "AuditBound",
    "GroupRdp",
    "audit_epsilon_lower_bound",
    "best_audit_over_guess_counts",
    "group_privacy_rdp",
    "guess_membership",
    "loss_threshold_attack",
    "MembershipReport",
    "one_run_p_value",
]

FloatArray = npt.NDArray[np.float64]

_BETA_MARGIN = 1e-9
"""Relative margin taken off beta so floating-point error never rejects a hypothesis it shouldn't."""

_BISECTION_STEPS = 60
"""Halvings of the bracket: the reported bound is within 2^-60 of its bracket's width."""


@dataclass(frozen=True)
class AuditBound:
    """An epsilon lower bound from one run (Steinke, Nasr & Jagielski 2023).

    Attributes:
        epsilon: The largest eps (rounded down) such that "(eps, delta)-DP" is rejected at
            level 1 - confidence; 0.0 when not even eps = 0 is rejected.
        confidence: 1 - beta.
        delta: The delta of the null hypothesis.
        canaries: m, the number of canaries (each included with probability 1/2).
        guesses: r, the guesses made (abstentions excluded).
        correct: v, the correct guesses.
        p_value: The p-value of the null hypothesis at ``epsilon`` (<= 1 - confidence).
    """

    epsilon: float
    confidence: float
    delta: float
    canaries: int
    guesses: int
    correct: int
    p_value: float


def _counts(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    m = non_negative_int("canaries", canaries)
    r = non_negative_int("guesses", guesses)
    v = non_negative_int("correct", correct)
    if not v <= r <= m:
        raise InvalidParameterError(
            "correct", v, f"need correct <= guesses <= canaries (got {v}, {r}, {m})"
        )
    return m, r, v


def one_run_p_value(
    *, epsilon: float, delta: float, canaries: int, guesses: int, correct: int
) -> float:
    """Return an upper bound on P[at least ``correct`` correct guesses] under (eps, delta)-DP.

    Steinke, Nasr & Jagielski 2023, Theorem 1 (delta = 0): the number W of correct guesses out
    of r is stochastically dominated by Binomial(r, p), p = e^eps / (1 + e^eps) (the accuracy of
    eps-DP randomized response), so P[W >= v] <= P[Binomial(r, p) >= v]. Theorem 3 (delta > 0)
    adds 2 m delta * max_{1 <= i <= v} P[v - i <= Binomial(r, p) < v] / i (their Algorithm 2).

    Returns:
        The p-value, clipped to at most 1.
    """
    eps = finite_float("epsilon", epsilon)
    if eps < 0:
        raise InvalidParameterError("epsilon", epsilon, "must be >= 0")
    d = probability("delta", delta)
    m, r, v = _counts(canaries, guesses, correct)
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-eps))  # e^eps / (1 + e^eps), without overflow for large eps
    tail = float(stats.binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    if d == 0.0:
        return min(tail, 1.0)
    # P[v - i <= X < v] for i = 1..v, as cumulative sums of pmf(v - 1), pmf(v - 2), ...
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, p))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * d * alpha, 1.0)


def audit_epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, confidence: float = 0.95, delta: float = 0.0
) -> AuditBound:
    """Return the epsilon lower bound of a one-run audit at ``confidence``.

    The bound is the largest eps whose null hypothesis "(eps, delta)-DP" has p-value
    <= beta = 1 - confidence (Steinke, Nasr & Jagielski 2023, Theorems 1 and 3). A mechanism
    that is eps-DP is eps'-DP for every eps' >= eps, so rejecting at eps rejects every smaller
    eps too: any eps with p-value <= beta is a valid bound. Bisection keeps the invariant
    p(lo) <= beta < p(hi) and returns ``lo`` (rounded down).
    """
    conf = probability("confidence", confidence)
    if not 0.0 < conf < 1.0:
        raise InvalidParameterError("confidence", confidence, "must be in (0, 1)")
    # 1 - 0.95 is 0.05000000000000004 in floats, and scipy's tail is accurate to ~1e-15
    # relative: a 1e-9 relative margin keeps p(lo) <= the beta the user meant (round down).
    beta = (1.0 - conf) * (1.0 - _BETA_MARGIN)
    m, r, v = _counts(canaries, guesses, correct)
    d = probability("delta", delta)

    def p_at(eps: float) -> float:
        return one_run_p_value(epsilon=eps, delta=d, canaries=m, guesses=r, correct=v)

    def bound(eps: float, p: float) -> AuditBound:
        return AuditBound(eps, conf, d, m, r, v, p)

    if p_at(0.0) > beta:
        return bound(0.0, p_at(0.0))
    lo, hi = 0.0, 1.0
    while p_at(hi) <= beta:  # grow the bracket; v = r with delta = 0 stays finite (p^r -> 1)
        lo, hi = hi, 2.0 * hi
        if hi > 1e4:
            return bound(lo, p_at(lo))
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if p_at(mid) <= beta:
            lo = mid
        else:
            hi = mid
    return bound(lo, p_at(lo))


def guess_membership(scores: object, *, k_plus: int, k_minus: int) -> npt.NDArray[np.int8]:
    """Return +1 ("in") for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, else 0.

    Ties are broken by position (a stable sort), which does not depend on membership.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)):
        raise InvalidParameterError("scores", "array", "must be a 1-D array of finite floats")
    kp = non_negative_int("k_plus", k_plus)
    km = non_negative_int("k_minus", k_minus)
    if kp + km > s.size:
        raise InvalidParameterError("k_plus", kp, f"k_plus + k_minus must be <= {s.size}")
    order = np.argsort(-s, kind="stable")
    guesses = np.zeros(s.size, dtype=np.int8)
    guesses[order[:kp]] = 1
    if km:
        guesses[order[s.size - km :]] = -1
    return guesses


def best_audit_over_guess_counts(
    scores: object,
    included: object,
    *,
    guess_counts: tuple[int, ...],
    confidence: float = 0.95,
    delta: float = 0.0,
) -> AuditBound:
    """Audit with k+ = k- = k for each k in ``guess_counts``; return the largest bound.

    Trying several k and keeping the best is a multiple test; a Bonferroni correction keeps
    the result sound: each k is tested at level beta / len(guess_counts), so the family-wise
    error stays <= beta. The returned bound states the overall ``confidence``.
    """
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    if truth.shape != s.shape:
        raise InvalidParameterError("included", truth.shape, f"must match scores {s.shape}")
    if not guess_counts:
        raise InvalidParameterError("guess_counts", guess_counts, "must not be empty")
    conf = probability("confidence", confidence)
    per_test = 1.0 - (1.0 - conf) / len(guess_counts)
    best: AuditBound | None = None
    for k in guess_counts:
        guesses = guess_membership(s, k_plus=k, k_minus=k)
        made = guesses != 0
        correct = int(np.sum((guesses == 1) & truth) + np.sum((guesses == -1) & ~truth))
        found = audit_epsilon_lower_bound(
            canaries=s.size, guesses=int(made.sum()), correct=correct,
            confidence=per_test, delta=delta,
        )  # fmt: skip
        if best is None or found.epsilon > best.epsilon:
            best = found
    assert best is not None
    return AuditBound(
        best.epsilon, conf, best.delta, best.canaries, best.guesses, best.correct, best.p_value
    )


@dataclass(frozen=True)
class MembershipReport:
    """A loss-threshold membership-inference attack (Yeom et al. 2018), as TF Privacy reports it.

    Attributes:
        auc: Area under the ROC curve of "member" scored by -loss (0.5: no signal).
        tpr_at_fpr: FPR -> the largest TPR of a threshold whose FPR is <= that FPR.
        members: Number of member (training) examples scored.
        non_members: Number of held-out examples scored.
    """

    auc: float
    tpr_at_fpr: dict[float, float]
    members: int
    non_members: int


def loss_threshold_attack(
    member_losses: object,
    non_member_losses: object,
    *,
    fprs: tuple[float, ...] = (0.001, 0.01, 0.1),
) -> MembershipReport:
    """Score membership by minus the loss: a lower loss says "member".

    Yeom et al. 2018 ("Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting"), the threshold adversary; TF Privacy's and MindArmour's simple attacks.
    The AUC is the Mann-Whitney statistic P[score(member) > score(non-member)] with ties counted
    1/2. For each target FPR the threshold is the strictest that lets at most that fraction of
    non-members through (``score > t``), so a small held-out set gives a conservative TPR (at
    FPR 0.1% with 360 non-members, t is above every non-member).
    """
    member = np.asarray(member_losses, dtype=np.float64).ravel()
    other = np.asarray(non_member_losses, dtype=np.float64).ravel()
    if member.size == 0 or other.size == 0:
        raise InvalidParameterError("losses", (member.size, other.size), "need both groups")
    if not (np.all(np.isfinite(member)) and np.all(np.isfinite(other))):
        raise InvalidParameterError("losses", "array", "must be finite")
    ranks = stats.rankdata(np.concatenate([-member, -other]))  # average ranks for ties
    u = ranks[: member.size].sum() - member.size * (member.size + 1) / 2.0
    auc = float(u / (member.size * other.size))
    other_sorted = np.sort(-other)[::-1]  # non-member scores, descending
    tpr: dict[float, float] = {}
    for fpr in fprs:
        allowed = math.floor(probability("fpr", fpr) * other.size + 1e-9)
        # t = the (allowed+1)-th highest non-member score: exactly `allowed` lie strictly above
        # it at most (ties only lower that count).
        t = other_sorted[allowed] if allowed < other.size else -np.inf
        tpr[fpr] = float(np.mean(-member > t))
    return MembershipReport(auc, tpr, int(member.size), int(other.size))


@dataclass(frozen=True)
class GroupRdp:
    """An RDP curve for groups of ``group_size`` records (Mironov 2017, Proposition 2).

    Attributes:
        orders: The orders alpha / 2^c at which the group bound holds (each > 1).
        rdp: The group RDP 3^c * rdp(alpha) at those orders.
        group_size: K, the declared maximum records per individual.
        doublings: c = ceil(log2 K).
    """

    orders: FloatArray
    rdp: FloatArray
    group_size: int
    doublings: int


def group_privacy_rdp(*, orders: object, rdp: object, group_size: int) -> GroupRdp:
    """Return the RDP curve of a mechanism for neighbours differing in ``group_size`` records.

    Mironov 2017, "Renyi Differential Privacy", Proposition 2: if f is (alpha, eps)-RDP and g
    is 2^c-stable (changing g's input in one place changes its output in at most 2^c places),
    with alpha >= 2^(c+1), then f o g is (alpha / 2^c, 3^c eps)-RDP. An individual with K records
    is a K-stable change, hence 2^c-stable for c = ceil(log2 K); orders below 2^(c+1) are dropped.
    K = 1 returns the curve unchanged.

    Raises:
        InvalidParameterError: for K < 1, mismatched arrays, or when no order is large enough.
    """
    k = non_negative_int("group_size", group_size)
    if k < 1:
        raise InvalidParameterError("group_size", group_size, "must be >= 1")
    a = np.asarray(orders, dtype=np.float64)
    e = np.asarray(rdp, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1:
        raise InvalidParameterError("rdp", e.shape, f"must be 1-D and match orders {a.shape}")
    c = group_exponent(k)  # the one rounding of K up to 2^c (dp_core.group)
    if c == 0:
        return GroupRdp(a.copy(), e.copy(), k, 0)
    keep = a >= 2.0 ** (c + 1)
    if not np.any(keep):
        raise InvalidParameterError(
            "orders", float(a.max()), f"group privacy for K={k} needs orders >= {2 ** (c + 1)}"
        )
    return GroupRdp(a[keep] / 2.0**c, e[keep] * 3.0**c, k, c)
