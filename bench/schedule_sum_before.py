"""BASELINE for bench/accountant.py only: the RDP fast path as it was before issue 13 (per-order trees).

Sum of sampled-Gaussian RDP over many distinct noise multipliers (decaying schedules).

A decaying schedule of T steps has T distinct sigmas; evaluating the exact series T times is the
"plain loop" (Opacus takes ~45 ms per sigma). RDP composes by summation (Mironov 2017, Prop. 1),
so we need S(alpha) = sum_t w_t RDP_alpha(sigma_t) only. For each order, u -> RDP_alpha(exp(u))
is analytic in u = log sigma, so on short intervals it is reproduced to ~1e-13 relative by a
Chebyshev interpolant (Trefethen, "Approximation Theory and Approximation Practice", Thm. 8.2).
We split [log sigma_min, log sigma_max] adaptively until, on every piece and for every order, the
interpolant matches the exact evaluator at the midpoints between nodes to ``_REL_TOL``. Since all
terms are positive, a pointwise relative error bound carries over to the sum. The sum is then
linear in the coefficients: S = sum_pieces (sum_{t in piece} w_t T_j(x_t)) @ coefficients, so the
work per step is one Chebyshev basis row (degree + 1 numbers), shared by all orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev

from dp_core.rdp.orders import FloatArray
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian_matrix

_DEGREE = 24
_REL_TOL = 1e-13
_EXACT_LIMIT = 96  # up to this many distinct sigmas, evaluate each exactly
_MAX_DEPTH = 16

# Chebyshev points of the first kind on [-1, 1]; _TO_COEFFS maps values at them to coefficients.
_NODES = np.cos((np.arange(_DEGREE + 1) + 0.5) * np.pi / (_DEGREE + 1))
_TO_COEFFS = np.linalg.inv(chebyshev.chebvander(_NODES, _DEGREE))


@dataclass(frozen=True)
class _OrderFit:
    """Dyadic leaves (depth, index) of [lo, hi] with Chebyshev coefficients, for one order."""

    depths: np.ndarray
    indices: np.ndarray
    coeffs: FloatArray
    accurate: np.ndarray  # False where the maximum depth was reached without meeting the tolerance


def rdp_sampled_gaussian_sum(
    *,
    sample_rate: float,
    noise_multipliers: FloatArray,
    counts: FloatArray,
    orders: FloatArray,
    exact_limit: int = _EXACT_LIMIT,
) -> FloatArray:
    """Return sum_t counts_t * RDP(sample_rate, sigma_t) at each order.

    Args:
        sample_rate: Poisson sampling rate q in [0, 1].
        noise_multipliers: Distinct sigmas (> 0).
        counts: Number of steps using each sigma.
        orders: Renyi orders.
        exact_limit: Up to this many sigmas the exact evaluator is used for each of them.
    """
    sigmas = np.asarray(noise_multipliers, dtype=np.float64).reshape(-1)
    weights = np.asarray(counts, dtype=np.float64).reshape(-1)
    a = np.asarray(orders, dtype=np.float64).reshape(-1)
    if sample_rate == 0.0 or sigmas.size == 0:
        return np.zeros(a.size)
    u = np.log(sigmas)
    lo, hi = float(u.min()), float(u.max())
    if sigmas.size <= exact_limit or hi - lo < 1e-12:
        exact = rdp_sampled_gaussian_matrix(
            sample_rate=sample_rate, noise_multipliers=sigmas, orders=a
        )
        return np.asarray(weights @ exact, dtype=np.float64)
    fits = [_fit_order(sample_rate, float(alpha), lo, hi) for alpha in a]
    weights_by_depth: dict[int, tuple[np.ndarray, FloatArray]] = {}
    total = np.empty(a.size)
    for k, fit in enumerate(fits):
        depth = int(fit.depths.max())
        if depth not in weights_by_depth:
            weights_by_depth[depth] = _node_weights(u, weights, lo, hi, depth)
        cells, node_weights = weights_by_depth[depth]
        if np.all(fit.accurate) and node_weights.size < u.size:
            width = (hi - lo) / 2**depth
            node_u = lo + width * (cells[:, None] + 0.5 * (1.0 + _NODES[None, :]))
            total[k] = float(np.sum(node_weights * _evaluate(fit, node_u, lo, hi)))
        else:  # evaluate at the points themselves (exactly inside leaves that missed the tolerance)
            total[k] = float(weights @ _evaluate_points(fit, sample_rate, float(a[k]), u, lo, hi))
    return total


def _exact(q: float, u: FloatArray, alpha: float) -> FloatArray:
    matrix = rdp_sampled_gaussian_matrix(
        sample_rate=q, noise_multipliers=np.exp(u), orders=np.array([alpha])
    )
    return matrix[:, 0]


def _fit_order(q: float, alpha: float, lo: float, hi: float) -> _OrderFit:
    """Bisect [lo, hi] until the degree-24 interpolant of each leaf has negligible tail coefficients.

    Chebyshev coefficients of an analytic function decay geometrically; when the last three are
    below ``_REL_TOL`` times the smallest value on the leaf, the interpolant is accurate to about
    that relative level (Trefethen, ATAP, ch. 8; the chebfun "plateau" test in its simplest form).
    """
    pending = np.array([[0, 0]])  # (depth, index)
    leaves: list[tuple[int, int, FloatArray, bool]] = []
    while pending.size:
        scale = (hi - lo) / 2.0 ** pending[:, 0]
        starts = lo + scale * pending[:, 1]
        points = starts[:, None] + scale[:, None] * 0.5 * (1.0 + _NODES[None, :])
        values = _exact(q, points.reshape(-1), alpha).reshape(points.shape)
        coeffs = values @ _TO_COEFFS.T
        tail = np.abs(coeffs[:, -3:]).sum(axis=1)
        accurate = tail <= _REL_TOL * np.abs(values).min(axis=1)
        ok = accurate | (pending[:, 0] >= _MAX_DEPTH)
        leaves += [
            (int(d), int(i), c, bool(good))
            for (d, i), c, good in zip(pending[ok], coeffs[ok], accurate[ok], strict=True)
        ]
        split = pending[~ok]
        pending = np.concatenate(
            [
                np.stack([split[:, 0] + 1, 2 * split[:, 1]], 1),
                np.stack([split[:, 0] + 1, 2 * split[:, 1] + 1], 1),
            ]
        )
    return _OrderFit(
        np.array([leaf[0] for leaf in leaves]),
        np.array([leaf[1] for leaf in leaves]),
        np.array([leaf[2] for leaf in leaves]),
        np.array([leaf[3] for leaf in leaves]),
    )


def _node_weights(
    u: FloatArray, weights: FloatArray, lo: float, hi: float, depth: int
) -> tuple[np.ndarray, FloatArray]:
    """Quadrature weights at the Chebyshev nodes of each occupied depth-``depth`` cell.

    For a polynomial p of degree <= 24 on a cell, sum_t w_t p(x_t) = M . c = (M @ V^-1) . p(nodes),
    with M the weighted Chebyshev moments of the cell's points and c = V^-1 p(nodes) its coefficients.
    """
    position = (u - lo) / (hi - lo) * 2**depth
    cell = np.clip(np.floor(position), 0, 2**depth - 1)
    x = np.clip(2.0 * (position - cell) - 1.0, -1.0, 1.0)
    occupied, inverse = np.unique(cell, return_inverse=True)
    basis = weights[:, None] * chebyshev.chebvander(x, _DEGREE)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(occupied.size))
    moments = np.add.reduceat(basis[order], bounds, axis=0)
    return occupied, moments @ _TO_COEFFS


def _locate(
    fit: _OrderFit, flat_u: FloatArray, lo: float, hi: float
) -> tuple[np.ndarray, FloatArray]:
    """Leaf index and local coordinate in [-1, 1] of each point."""
    finest = int(fit.depths.max())
    first_cell = fit.indices << (finest - fit.depths)
    order = np.argsort(first_cell)
    position = np.clip((flat_u - lo) / (hi - lo), 0.0, 1.0)
    cell = np.clip(np.floor(position * 2**finest), 0, 2**finest - 1)
    leaf = order[np.clip(np.searchsorted(first_cell[order], cell, side="right") - 1, 0, None)]
    d = fit.depths[leaf]
    x = np.clip(2.0 * (position * 2.0**d - fit.indices[leaf]) - 1.0, -1.0, 1.0)
    return leaf, x


def _clenshaw(coeffs: FloatArray, x: FloatArray) -> FloatArray:
    """Chebyshev series with per-point coefficients (Clenshaw's recurrence)."""
    b1 = np.zeros_like(x)
    b2 = np.zeros_like(x)
    for j in range(_DEGREE, 0, -1):
        b1, b2 = 2.0 * x * b1 - b2 + coeffs[:, j], b1
    return np.asarray(x * b1 - b2 + coeffs[:, 0], dtype=np.float64)


def _evaluate(fit: _OrderFit, node_u: FloatArray, lo: float, hi: float) -> FloatArray:
    """Evaluate the piecewise interpolant of one order at ``node_u`` (cells x nodes)."""
    leaf, x = _locate(fit, node_u.reshape(-1), lo, hi)
    return _clenshaw(fit.coeffs[leaf], x).reshape(node_u.shape)


def _evaluate_points(
    fit: _OrderFit, q: float, alpha: float, u: FloatArray, lo: float, hi: float
) -> FloatArray:
    """Interpolant at each point, exact evaluation inside leaves that missed the tolerance."""
    leaf, x = _locate(fit, u, lo, hi)
    values = _clenshaw(fit.coeffs[leaf], x)
    rough = ~fit.accurate[leaf]
    if np.any(rough):
        values[rough] = _exact(q, u[rough], alpha)
    return values
