"""RDP to (epsilon, delta) conversion.

Uses the conversion of Canonne, Kamath & Steinke 2020 ("The Discrete Gaussian for Differential
Privacy", Prop. 12; equivalently Balle et al. 2020, "Hypothesis testing interpretations and Renyi
differential privacy", Thm. 21): an (alpha, rho)-RDP mechanism is (epsilon, delta)-DP for

    epsilon = rho + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1),

valid for every real alpha > 1. It is never worse than Mironov 2017, Prop. 3
(rho + log(1/delta)/(alpha - 1)). A negative value means (0, delta)-DP, so epsilon is clipped at 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from dp_core.errors import InvalidParameterError
from dp_core.rdp.orders import FloatArray, validate_orders
from dp_core.validation import finite_float, open_probability

__all__ = [
    "DeltaResult",
    "EpsilonResult",
    "GridEdgeWarning",
    "epsilon_at_orders",
    "log_delta_at_orders",
    "rdp_capacity",
    "rdp_to_delta",
    "rdp_to_epsilon",
]


class GridEdgeWarning(UserWarning):
    """The optimal order sits at the edge of the grid: a wider grid could give a tighter bound."""


@dataclass(frozen=True)
class EpsilonResult:
    """Smallest epsilon over the orders, and where it was attained."""

    epsilon: float
    delta: float
    order: float
    at_grid_edge: bool


@dataclass(frozen=True)
class DeltaResult:
    """Smallest delta over the orders, and where it was attained."""

    delta: float
    epsilon: float
    order: float
    at_grid_edge: bool


def epsilon_at_orders(orders: FloatArray, rdp: FloatArray, log_delta: float) -> FloatArray:
    """Return the CKS epsilon at each order (unclipped; +inf where rdp is +inf)."""
    a = np.asarray(orders, dtype=np.float64)
    return rdp + np.log1p(-1.0 / a) - (log_delta + np.log(a)) / (a - 1.0)


def log_delta_at_orders(orders: FloatArray, rdp: FloatArray, epsilon: float) -> FloatArray:
    """Return log delta at each order for a given epsilon (CKS Prop. 12, solved for delta)."""
    a = np.asarray(orders, dtype=np.float64)
    return (a - 1.0) * (rdp - epsilon + np.log1p(-1.0 / a)) - np.log(a)


def rdp_capacity(*, orders: object, epsilon: float, deltas: object) -> FloatArray:
    """Return B(a), the largest RDP at order a that still converts to (epsilon, delta_a).

    B(a) = epsilon - log(1/delta_a)/(a-1) - log(1 - 1/a) + log(a)/(a-1): the CKS conversion
    solved for rho. ``deltas`` is one delta for all orders or one per order.
    """
    a = validate_orders(orders)
    eps = finite_float("epsilon", epsilon)
    d = np.broadcast_to(np.asarray(deltas, dtype=np.float64), a.shape)
    if not np.all((d > 0.0) & (d < 1.0)):
        raise InvalidParameterError("deltas", deltas, "every delta must be in (0, 1)")
    return eps + np.log(d) / (a - 1.0) - np.log1p(-1.0 / a) + np.log(a) / (a - 1.0)


def _checked(orders: object, rdp: object) -> tuple[FloatArray, FloatArray]:
    a = validate_orders(orders)
    r = np.asarray(rdp, dtype=np.float64).reshape(-1)
    if r.shape != a.shape:
        raise InvalidParameterError(
            "rdp", f"shape {r.shape}", f"must match orders (shape {a.shape})"
        )
    if np.any(np.isnan(r)) or np.any(r < 0.0):
        raise InvalidParameterError("rdp", "array", "RDP values must be >= 0 and not NaN")
    return a, r


def _warn_edge(at_edge: bool, order: float) -> None:
    if at_edge:
        warnings.warn(
            f"optimal Renyi order {order:g} is at the edge of the grid; extend the orders "
            "(dpledger: --orders 1.5,2,4,...,4096; API and library: orders)",
            GridEdgeWarning,
            stacklevel=3,
        )


def rdp_to_epsilon(
    *, orders: object, rdp: object, delta: float, warn: bool = True
) -> EpsilonResult:
    """Return the smallest epsilon such that the RDP curve implies (epsilon, delta)-DP.

    Args:
        orders: Renyi orders (> 1). Need not be sorted (they are sorted with ``rdp``).
        rdp: RDP at each order, in the caller's order.
        delta: Target delta in (0, 1).
        warn: Emit :class:`GridEdgeWarning` when the optimum sits at the grid's edge.
    """
    order_arr = np.asarray(orders, dtype=np.float64).reshape(-1)
    a, r = _checked(order_arr, rdp)
    r = r[np.argsort(order_arr, kind="stable")] if not np.all(np.diff(order_arr) > 0) else r
    log_delta = math.log(open_probability("delta", delta))
    if not np.any(r > 0.0):  # nothing was spent: (0, 0)-DP, whatever the conversion says
        return EpsilonResult(0.0, float(delta), float(a[-1]), False)
    eps = epsilon_at_orders(a, r, log_delta)
    i = int(np.argmin(eps))
    # An edge optimum matters only when the bound is positive (epsilon 0 cannot be improved).
    at_edge = bool(a.size > 1 and (i == 0 or i == a.size - 1) and 0.0 < eps[i] < math.inf)
    if warn:
        _warn_edge(at_edge, float(a[i]))
    return EpsilonResult(max(0.0, float(eps[i])), float(delta), float(a[i]), at_edge)


def rdp_to_delta(*, orders: object, rdp: object, epsilon: float, warn: bool = True) -> DeltaResult:
    """Return the smallest delta such that the RDP curve implies (epsilon, delta)-DP (capped at 1)."""
    order_arr = np.asarray(orders, dtype=np.float64).reshape(-1)
    a, r = _checked(order_arr, rdp)
    r = r[np.argsort(order_arr, kind="stable")] if not np.all(np.diff(order_arr) > 0) else r
    eps = finite_float("epsilon", epsilon)
    if eps < 0.0:
        raise InvalidParameterError("epsilon", epsilon, "must be >= 0")
    log_delta = log_delta_at_orders(a, r, eps)
    i = int(np.argmin(log_delta))
    at_edge = bool(a.size > 1 and (i == 0 or i == a.size - 1) and log_delta[i] < 0.0)
    if warn:
        _warn_edge(at_edge, float(a[i]))
    return DeltaResult(float(min(1.0, math.exp(min(0.0, log_delta[i])))), eps, float(a[i]), at_edge)
