"""Sum of sampled-Gaussian RDP over many distinct noise multipliers (decaying schedules).

A decaying schedule of T steps has T distinct sigmas; evaluating the exact series T times is the
"plain loop" (Opacus takes ~45 ms per sigma). RDP composes by summation (Mironov 2017, Prop. 1),
so we need S(alpha) = sum_t w_t RDP_alpha(sigma_t) only. For each order, u -> RDP_alpha(exp(u))
is analytic in u = log sigma, so on short intervals it is reproduced to ~1e-13 relative by a
Chebyshev interpolant (Trefethen, "Approximation Theory and Approximation Practice", Thm. 8.2).
We split [log sigma_min, log sigma_max] adaptively (one tree shared by all orders, so each level
is one vectorised call of the exact evaluator; empty pieces are dropped) until, on every piece and
for every order, the interpolant's tail coefficients fall below ``_REL_TOL``. Since all
terms are positive, a pointwise relative error bound carries over to the sum. The sum is then
linear in the values at the nodes: S = sum_pieces W_piece @ values_piece, with W the quadrature
weights (sum_{t in piece} w_t T_j(x_t)) @ V^-1, so the work per step is one Chebyshev basis row
(degree + 1 numbers), shared by all orders, and the node values come straight from the fit.
"""

from __future__ import annotations

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
    position = (u - lo) / (hi - lo)  # in [0, 1]
    leaves, values, final, rough = _fit(sample_rate, a, lo, hi, position)
    node_weights, rough_piece = _leaf_weights(leaves, rough, position, weights)
    smooth = final & ~rough[:, None]
    total = np.einsum("ln,lno->o", node_weights, np.where(smooth[:, None, :], values, 0.0))
    inside = rough_piece >= 0
    if np.any(inside):  # pieces that missed the tolerance at the maximum depth: exactly
        exact = rdp_sampled_gaussian_matrix(
            sample_rate=sample_rate, noise_multipliers=sigmas[inside], orders=a
        )
        total += np.sum(weights[inside, None] * exact * final[rough_piece[inside]], axis=0)
    return np.asarray(total, dtype=np.float64)


def _fit(
    q: float, orders: FloatArray, lo: float, hi: float, position: FloatArray
) -> tuple[np.ndarray, FloatArray, np.ndarray, np.ndarray]:
    """Bisect [lo, hi] until every order's degree-24 interpolant has negligible tail coefficients.

    Chebyshev coefficients of an analytic function decay geometrically; when the last three are
    below ``_REL_TOL`` times the smallest value on the piece, the interpolant is accurate to about
    that relative level (Trefethen, ATAP, ch. 8; the chebfun "plateau" test in its simplest form).
    Each order stops splitting where it is accurate (large orders are smooth and stop early), all
    pending (piece, order) pairs of one level share one call of the exact evaluator, and pieces
    holding no sigma are dropped.

    Returns:
        Every piece visited as (depth, index) rows; the node values (piece x node x order); which
        orders each piece is final for (it tiles the occupied sigmas for every order); and which
        pieces reached the maximum depth without meeting the tolerance.
    """
    pending = np.array([[0, 0]])
    todo = np.ones((1, orders.size), dtype=bool)
    all_leaves, all_values, all_final, all_rough = [], [], [], []
    while pending.size:
        scale = 2.0 ** -pending[:, 0].astype(np.float64)
        starts = scale * pending[:, 1]
        nodes = lo + (hi - lo) * (starts[:, None] + scale[:, None] * 0.5 * (1.0 + _NODES[None, :]))
        values = _values_needed(q, orders, np.exp(nodes), todo)
        coeffs = np.einsum("kn,lno->lko", _TO_COEFFS, values)
        tail = np.abs(coeffs[:, -3:, :]).sum(axis=1)
        accurate = tail <= _REL_TOL * np.abs(values).min(axis=1)
        deepest = pending[:, 0] >= _MAX_DEPTH
        final = todo & (accurate | deepest[:, None])
        all_leaves.append(pending)
        all_values.append(values)
        all_final.append(final)
        all_rough.append(deepest & np.any(todo & ~accurate, axis=1))
        todo = todo & ~final
        split = np.any(todo, axis=1)
        children = np.concatenate(
            [np.stack([pending[split, 0] + 1, 2 * pending[split, 1] + bit], 1) for bit in (0, 1)]
        )
        child_todo = np.concatenate([todo[split], todo[split]])
        keep = _occupied(children, position)
        pending, todo = children[keep], child_todo[keep]
    return (
        np.concatenate(all_leaves),
        np.concatenate(all_values),
        np.concatenate(all_final),
        np.concatenate(all_rough),
    )


def _values_needed(
    q: float, orders: FloatArray, sigmas: FloatArray, todo: np.ndarray
) -> FloatArray:
    """Exact RDP at the nodes (piece x node x order) for the pending (piece, order) pairs only.

    Orders pending on the same pieces share one vectorised call; other entries are left at 0.
    """
    values = np.zeros((*sigmas.shape, orders.size))
    patterns, group = np.unique(todo.T, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        if not pattern.any():
            continue
        columns = np.flatnonzero(group.reshape(-1) == k)
        rows = np.flatnonzero(pattern)
        block = rdp_sampled_gaussian_matrix(
            sample_rate=q, noise_multipliers=sigmas[rows].reshape(-1), orders=orders[columns]
        )
        values[np.ix_(rows, np.arange(sigmas.shape[1]), columns)] = block.reshape(
            rows.size, sigmas.shape[1], columns.size
        )
    return values


def _leaf_weights(
    leaves: np.ndarray, rough: np.ndarray, position: FloatArray, weights: FloatArray
) -> tuple[FloatArray, np.ndarray]:
    """Quadrature weights at the Chebyshev nodes of every piece, and each point's rough piece.

    Returns (pieces x nodes) weights and, per point, the rough piece holding it (-1 if none; those
    points go to the exact evaluator).

    For a polynomial p of degree <= 24 on a piece, sum_t w_t p(x_t) = M . c = (M @ V^-1) . p(nodes),
    with M the weighted Chebyshev moments of the piece's points and c = V^-1 p(nodes).
    """
    node_weights = np.zeros((leaves.shape[0], _DEGREE + 1))
    rough_piece = np.full(position.size, -1)
    by_position = np.argsort(position, kind="stable")  # cells become contiguous runs
    sorted_position, sorted_weights = position[by_position], weights[by_position]
    for depth in np.unique(leaves[:, 0]):
        at_depth = np.flatnonzero(leaves[:, 0] == depth)
        at_depth = at_depth[np.argsort(leaves[at_depth, 1])]
        cell = np.clip(np.floor(sorted_position * 2.0**depth), 0, 2**depth - 1).astype(np.int64)
        slot = np.clip(np.searchsorted(leaves[at_depth, 1], cell), 0, at_depth.size - 1)
        hit = leaves[at_depth[slot], 1] == cell  # points inside one of this depth's pieces
        leaf = at_depth[slot[hit]]
        is_rough = rough[leaf]
        rough_piece[by_position[np.flatnonzero(hit)[is_rough]]] = leaf[is_rough]
        x = np.clip(2.0 * (sorted_position[hit] * 2.0**depth - cell[hit]) - 1.0, -1.0, 1.0)
        basis = sorted_weights[hit, None] * chebyshev.chebvander(x, _DEGREE)
        runs = np.flatnonzero(np.diff(leaf, prepend=-1) != 0)
        node_weights[leaf[runs]] = np.add.reduceat(basis, runs, axis=0) @ _TO_COEFFS
    return node_weights, rough_piece


def _occupied(leaves: np.ndarray, position: FloatArray) -> np.ndarray:
    """Mask of the dyadic pieces (depth, index) of [0, 1] that hold at least one position."""
    if leaves.size == 0:
        return np.zeros(0, dtype=bool)
    scale = 2.0 ** -leaves[:, 0].astype(np.float64)
    starts, stops = scale * leaves[:, 1], scale * (leaves[:, 1] + 1)
    ordered = np.sort(position)
    first = np.searchsorted(ordered, starts, side="left")
    last = np.searchsorted(ordered, stops, side="right")
    return np.asarray(last > first)
