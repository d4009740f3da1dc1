"""RDP of PATE's noisy-max aggregators, per query: data-independent and data-dependent bounds.

A PATE query holds a row of vote counts ``n_1 .. n_m`` (one vote per teacher). Neighbouring
datasets differ in one teacher's training data, so in one teacher's vote: ``n -> n - e_i + e_j``,
two counts move by one each (L1 sensitivity 2, L2 sensitivity sqrt(2), each count sensitivity 1).

Data-independent bounds (valid for every pair of neighbours; this is what a ledger may charge):

* GNMax, ``argmax(n + N(0, sigma^2 I))``: ``(alpha, alpha / sigma^2)``-RDP
  (Papernot et al. 2018, "Scalable Private Learning with PATE", Prop. 8).
* LNMax, ``argmax(n + Lap(b)^m)`` with ``b = 1/gamma``: the pointwise minimum of two valid bounds,
  (i) the Laplace mechanism on the whole count vector, whose two moved coordinates each contribute
  the one-dimensional Laplace RDP (Mironov 2017, "Renyi Differential Privacy", Prop. 6; RDP of a
  product adds up, and argmax is post-processing, Prop. 9), and (ii) the pure ``(2/b, 0)``-DP of
  the aggregator (Papernot et al. 2017, "Semi-supervised Knowledge Transfer for Deep Learning from
  Private Training Data", Sec. 3: LNMax is ``(2 gamma, 0)``-DP) converted with the tight
  pure-DP-to-RDP bound :func:`rdp_pure_dp`. Bound (i) is the smaller one on every case we tried
  (about half of (ii) for small orders); (ii) only guards the large-order limit, where both are
  ``2/b``.

Data-dependent bounds (they depend on the votes, so publishing them is not itself private; use
them for reporting, never for admission): from an upper bound ``q`` on the probability that the
noisy argmax differs from the plurality class,

* GNMax: Papernot et al. 2018, Thm. 6 with Prop. 7 (``q``) and Prop. 10 (choice of the two
  higher orders), as in the authors' reference implementation (``pate_2018/core.py``);
* LNMax: Papernot et al. 2017, Thm. 2 with Lemma 4 (``q``), the moments-accountant bound behind
  PySyft's ``perform_analysis``.

Both are combined with the data-independent bound by a pointwise minimum (each is valid). The
functions here do not validate their inputs; :mod:`dp_core.pate` does.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from dp_core.rdp.laplace import rdp_laplace
from dp_core.rdp.orders import FloatArray

__all__ = [
    "log_q_gnmax",
    "log_q_lnmax",
    "rdp_gnmax",
    "rdp_gnmax_data_dependent",
    "rdp_lnmax",
    "rdp_lnmax_data_dependent",
    "rdp_pure_dp",
]


def rdp_gnmax(*, noise_multiplier: float, orders: FloatArray) -> FloatArray:
    """Return the data-independent RDP of one GNMax query: alpha / sigma^2.

    Papernot et al. 2018, Prop. 8: the Gaussian mechanism with std sigma on a count vector of L2
    sensitivity sqrt(2) (Mironov 2017, Prop. 7: alpha * 2 / (2 sigma^2)), then argmax.
    """
    return np.asarray(orders, dtype=np.float64) / noise_multiplier**2


def rdp_pure_dp(*, epsilon: float, orders: FloatArray) -> FloatArray:
    """Return the tight RDP implied by pure epsilon-DP.

    eps(alpha) = eps - log((1 + e^-eps) / (1 + e^-((2 alpha - 1) eps))) / (alpha - 1), attained by
    randomized response (Steinke 2024, "Sharp RDP & zCDP from Pure DP", differentialprivacy.org,
    Thm. 4). It never exceeds eps nor alpha eps^2 / 2 (Bun & Steinke 2016, Prop. 3.3).
    """
    a = np.asarray(orders, dtype=np.float64)
    # log1p(exp(-x)) form: no overflow for large alpha * epsilon.
    gap = np.log1p(np.exp(-epsilon)) - np.log1p(np.exp(-(2.0 * a - 1.0) * epsilon))
    return np.asarray(np.maximum(epsilon - gap / (a - 1.0), 0.0), dtype=np.float64)


def rdp_lnmax(*, noise_scale: float, orders: FloatArray) -> FloatArray:
    """Return the data-independent RDP of one LNMax query with Laplace scale b (votes).

    min(2 * RDP of Laplace(b) at sensitivity 1 (Mironov 2017, Prop. 6, summed over the two counts
    that move), tight RDP of (2/b, 0)-DP (Papernot et al. 2017, Sec. 3; :func:`rdp_pure_dp`)).
    """
    laplace_vector = 2.0 * rdp_laplace(noise_scale=noise_scale, orders=orders)
    return np.minimum(laplace_vector, rdp_pure_dp(epsilon=2.0 / noise_scale, orders=orders))


def _log1mexp(x: FloatArray) -> FloatArray:
    """Return log(1 - exp(x)) for x <= 0 without cancellation (Maechler 2012's two branches)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        near_zero = np.log(-np.expm1(x))  # accurate for -log 2 < x <= 0
        far = np.log1p(-np.exp(x))  # accurate for x <= -log 2
    return np.asarray(np.where(x > -np.log(2.0), near_zero, far), dtype=np.float64)


def _gaps_to_top(votes: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vote gaps n_top - n_i >= 0 per row, and a mask that is True at each row's plurality class."""
    counts = np.asarray(votes, dtype=np.float64)
    top = np.argmax(counts, axis=1)
    is_top = np.zeros(counts.shape, dtype=bool)
    is_top[np.arange(counts.shape[0]), top] = True
    gaps = np.max(counts, axis=1, keepdims=True) - counts
    return gaps, is_top


def _union_bound(log_terms: FloatArray, is_top: FloatArray) -> FloatArray:
    """Log of the sum of the non-top terms per row, capped at log(1 - 1/m).

    The cap: the plurality class has the largest probability of winning the noisy argmax (adding
    votes to a class can only help it), so it wins with probability >= 1/m.
    """
    masked = np.where(is_top, -np.inf, log_terms)
    classes = log_terms.shape[1]
    log_q: FloatArray = np.minimum(special.logsumexp(masked, axis=1), np.log1p(-1.0 / classes))
    return log_q


def log_q_gnmax(votes: FloatArray, *, noise_multiplier: float) -> FloatArray:
    """Return an upper bound on log Pr[GNMax answer != plurality class], one per row of ``votes``.

    Papernot et al. 2018, Prop. 7 (union bound over the other classes):
    q <= sum_{i != i*} Pr[N(0, 2 sigma^2) > n_i* - n_i] = sum 1/2 erfc((n_i* - n_i) / (2 sigma)).
    Each term is evaluated with ``norm.logsf`` so that huge gaps do not underflow to log 0.
    """
    gaps, is_top = _gaps_to_top(votes)
    log_terms = stats.norm.logsf(gaps, scale=np.sqrt(2.0) * noise_multiplier)
    return _union_bound(np.asarray(log_terms, dtype=np.float64), is_top)


def log_q_lnmax(votes: FloatArray, *, noise_scale: float) -> FloatArray:
    """Return an upper bound on log Pr[LNMax answer != plurality class], one per row of ``votes``.

    Papernot et al. 2017, Lemma 4 (union bound): with gamma = 1/b and gap d = n_j* - n_j,
    q <= sum_{j != j*} (2 + gamma d) / (4 exp(gamma d)); each term is exactly Pr[X - Y > d] for
    X, Y ~ Lap(b) independent. Summed in log space.
    """
    gaps, is_top = _gaps_to_top(votes)
    scaled = gaps / noise_scale
    log_terms = np.log(2.0 + scaled) - scaled - np.log(4.0)
    return _union_bound(log_terms, is_top)


def rdp_gnmax_data_dependent(
    *, log_q: FloatArray, noise_multiplier: float, orders: FloatArray
) -> FloatArray:
    """Return the data-dependent RDP of one GNMax query per ``log_q`` (rows) and order (columns).

    Papernot et al. 2018, Thm. 6 with the higher orders of Prop. 10: mu2 = sigma sqrt(log 1/q),
    mu1 = mu2 + 1, eps_i = mu_i / sigma^2 (Prop. 8). For alpha < mu1 and q in the range where the
    bound increases in q (so that an upper bound on q may be used),

        RDP(alpha) <= log((1 - q) A^(alpha-1) + q B^(alpha-1)) / (alpha - 1),
        A = (1 - q) / (1 - (q e^eps2)^((mu2-1)/mu2)),  B = e^eps1 / q^(1/(mu1-1)).

    Elsewhere the data-independent alpha / sigma^2 is returned; the result is the pointwise minimum.
    The result has shape ``log_q.shape + orders.shape``; log q = -inf (a certain answer) gives 0.
    """
    lq = np.asarray(log_q, dtype=np.float64)[..., None]
    a = np.asarray(orders, dtype=np.float64)
    variance = noise_multiplier**2
    independent = a / variance + np.zeros_like(lq)
    # Rows where the theorem does not apply produce inf/nan here; they are masked out below.
    with np.errstate(all="ignore"):
        mu2 = np.sqrt(-lq * variance)
        mu1 = mu2 + 1.0
        eps1, eps2 = mu1 / variance, mu2 / variance
        q_in_range = lq <= (mu2 - 1.0) * eps2 - mu2 * (
            np.log1p(1.0 / (mu1 - 1.0)) + np.log1p(1.0 / (mu2 - 1.0))
        )
        applies = (mu2 > 1.0) & (a < mu1) & (lq + eps2 < 0.0) & q_in_range
        log_1mq = _log1mexp(lq)
        log_a = log_1mq - _log1mexp((lq + eps2) * (1.0 - 1.0 / mu2))
        log_b = eps1 - lq / (mu1 - 1.0)
        # log-sum-exp of the two terms: A^(alpha-1) overflows for large orders.
        bound = np.logaddexp(log_1mq + (a - 1.0) * log_a, lq + (a - 1.0) * log_b) / (a - 1.0)
    result = np.where(applies, np.minimum(independent, bound), independent)
    return np.asarray(np.where(np.isneginf(lq), 0.0, result), dtype=np.float64)


def rdp_lnmax_data_dependent(
    *, log_q: FloatArray, noise_scale: float, orders: FloatArray
) -> FloatArray:
    """Return the data-dependent RDP of one LNMax query per ``log_q`` (rows) and order (columns).

    Papernot et al. 2017, Thm. 2, for the (2 gamma, 0)-DP aggregator (gamma = 1/b, eps = 2 gamma)
    when q < 1 / (1 + e^eps) (the theorem's q < (e^(2 gamma) - 1) / (e^(4 gamma) - 1)): the log
    moment at l = alpha - 1 is at most log((1-q) ((1-q) / (1 - e^eps q))^l + q e^(eps l)), and the
    RDP at order alpha is the log moment divided by l. (PySyft's and the original code test q < 1/2
    instead, which is looser than the theorem.) Elsewhere, and wherever it is smaller, the
    data-independent :func:`rdp_lnmax` is used. Shape ``log_q.shape + orders.shape``.
    """
    lq = np.asarray(log_q, dtype=np.float64)[..., None]
    a = np.asarray(orders, dtype=np.float64)
    eps = 2.0 / noise_scale
    independent = rdp_lnmax(noise_scale=noise_scale, orders=a) + np.zeros_like(lq)
    applies = lq < -np.logaddexp(0.0, eps)
    l = a - 1.0  # noqa: E741 -- the moment order of Papernot et al. 2017
    with np.errstate(all="ignore"):  # rows outside the theorem's range are masked out below
        log_1mq = _log1mexp(lq)
        log_ratio = log_1mq - _log1mexp(eps + lq)
        bound = np.logaddexp(log_1mq + l * log_ratio, lq + l * eps) / l
    result = np.where(applies, np.minimum(independent, bound), independent)
    return np.asarray(np.where(np.isneginf(lq), 0.0, result), dtype=np.float64)
