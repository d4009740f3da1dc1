"""The RDP accountant: a ledger of mechanisms, RDP kept per order, converted when read.

Validate-then-mutate: :meth:`RdpAccountant.compose` computes the whole mechanism's RDP before it
changes any state, so an invalid or unsupported mechanism leaves the accountant untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize

from dp_core.conversion import (
    epsilon_at_orders,
    log_delta_at_orders,
    rdp_to_delta,
    rdp_to_epsilon,
)
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import Mechanism, mechanism_from_dict, mechanism_to_dict
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS, FloatArray, validate_orders
from dp_core.validation import finite_float, non_negative_int, open_probability

__all__ = ["DeltaReport", "EpsilonReport", "RdpAccountant", "refine_epsilon"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon of a composition at a given delta.

    Attributes:
        epsilon: The reported bound: the grid's optimum refined over real orders (<= epsilon_grid).
        epsilon_grid: The best epsilon over the grid of orders.
        order: The Renyi order attaining ``epsilon``.
        order_grid: The grid order attaining ``epsilon_grid``.
        delta: The delta the epsilon holds for.
        at_grid_edge: The grid optimum is the smallest or largest order of the grid.
    """

    epsilon: float
    epsilon_grid: float
    order: float
    order_grid: float
    delta: float
    at_grid_edge: bool


@dataclass(frozen=True)
class DeltaReport:
    """Delta of a composition at a given epsilon (refined over real orders like EpsilonReport)."""

    delta: float
    delta_grid: float
    order: float
    order_grid: float
    epsilon: float
    at_grid_edge: bool


def _bracket(orders: FloatArray, best: float) -> tuple[float, float]:
    """Neighbouring grid orders of ``best``; beyond the grid, extend (any order > 1 is valid)."""
    i = int(np.searchsorted(orders, best))
    lo = float(orders[i - 1]) if i > 0 else 1.0 + (float(orders[0]) - 1.0) / 4.0
    hi = float(orders[i + 1]) if i + 1 < orders.size else 2.0 * float(orders[-1])
    return lo, hi


def refine_epsilon(
    *,
    orders: FloatArray,
    rdp: FloatArray,
    delta: float,
    rdp_at: Callable[[float], float],
    warn: bool = True,
) -> EpsilonReport:
    """Minimise the CKS epsilon over real orders between the grid optimum's neighbours.

    Every real order > 1 gives a valid bound (Canonne, Kamath & Steinke 2020, Prop. 12), so the
    reported epsilon is min(grid optimum, continuous optimum) and never exceeds the grid's.
    """
    grid = rdp_to_epsilon(orders=orders, rdp=rdp, delta=delta, warn=warn)
    if not math.isfinite(grid.epsilon) or grid.epsilon == 0.0:
        return EpsilonReport(
            grid.epsilon, grid.epsilon, grid.order, grid.order, delta, grid.at_grid_edge
        )
    log_delta = math.log(delta)

    def objective(order: float) -> float:
        value = epsilon_at_orders(np.array([order]), np.array([rdp_at(order)]), log_delta)[0]
        return float(value) if math.isfinite(value) else math.inf

    lo, hi = _bracket(orders, grid.order)
    result = optimize.minimize_scalar(
        objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}
    )
    refined = max(0.0, float(result.fun))
    if refined < grid.epsilon:
        return EpsilonReport(
            refined, grid.epsilon, float(result.x), grid.order, delta, grid.at_grid_edge
        )
    return EpsilonReport(
        grid.epsilon, grid.epsilon, grid.order, grid.order, delta, grid.at_grid_edge
    )


class RdpAccountant:
    """Accumulates mechanisms; reports (epsilon, delta) from the summed RDP curve.

    Args:
        orders: Renyi orders to track (default :data:`dp_core.rdp.orders.DEFAULT_ORDERS`).
    """

    def __init__(self, orders: object = None) -> None:
        self._orders = validate_orders(DEFAULT_ORDERS if orders is None else orders)
        self._rdp = np.zeros(self._orders.size)
        self._entries: list[tuple[Mechanism, int]] = []

    @property
    def orders(self) -> FloatArray:
        """The tracked orders (read-only)."""
        return self._orders

    @property
    def rdp(self) -> FloatArray:
        """The summed RDP at each order (a copy)."""
        return self._rdp.copy()

    @property
    def entries(self) -> tuple[tuple[Mechanism, int], ...]:
        """The composed mechanisms with their counts, in order."""
        return tuple(self._entries)

    def compose(self, mechanism: Mechanism, count: int = 1) -> None:
        """Add ``count`` runs of ``mechanism``; nothing changes if it is invalid or unsupported."""
        count = non_negative_int("count", count)
        increment = count * compute_rdp(mechanism, self._orders) if count else None
        if increment is not None:
            self._rdp = self._rdp + increment
        self._entries.append((mechanism, count))

    def rdp_at(self, order: float) -> float:
        """Summed RDP of every composed mechanism at one real order > 1 (recomputed from the ledger)."""
        orders = np.array([finite_float("order", order)])
        return float(sum(count * compute_rdp(m, orders)[0] for m, count in self._entries if count))

    def get_epsilon(self, delta: float, *, warn: bool = True) -> EpsilonReport:
        """Smallest epsilon such that the composition is (epsilon, delta)-DP.

        Emits :class:`dp_core.conversion.GridEdgeWarning` (unless ``warn`` is False) when the grid
        optimum sits at the grid's edge; the report's ``at_grid_edge`` says the same.
        """
        delta = open_probability("delta", delta)
        return refine_epsilon(
            orders=self._orders, rdp=self._rdp, delta=delta, rdp_at=self.rdp_at, warn=warn
        )

    def get_delta(self, epsilon: float, *, warn: bool = True) -> DeltaReport:
        """Smallest delta such that the composition is (epsilon, delta)-DP."""
        epsilon = finite_float("epsilon", epsilon)
        grid = rdp_to_delta(orders=self._orders, rdp=self._rdp, epsilon=epsilon, warn=warn)
        if grid.delta in (0.0, 1.0):
            return DeltaReport(
                grid.delta, grid.delta, grid.order, grid.order, epsilon, grid.at_grid_edge
            )

        def objective(order: float) -> float:
            rdp = np.array([self.rdp_at(order)])
            return float(log_delta_at_orders(np.array([order]), rdp, epsilon)[0])

        lo, hi = _bracket(self._orders, grid.order)
        result = optimize.minimize_scalar(
            objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}
        )
        refined = math.exp(min(0.0, float(result.fun)))
        if refined < grid.delta:
            return DeltaReport(
                refined, grid.delta, float(result.x), grid.order, epsilon, grid.at_grid_edge
            )
        return DeltaReport(
            grid.delta, grid.delta, grid.order, grid.order, epsilon, grid.at_grid_edge
        )

    # --- state -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: orders and the ledger of mechanisms (RDP is recomputed on load)."""
        return {
            "version": _STATE_VERSION,
            "orders": [float(a) for a in self._orders],
            "entries": [{"count": c, "mechanism": mechanism_to_dict(m)} for m, c in self._entries],
        }

    def to_json(self) -> str:
        """Serialise the state (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RdpAccountant:
        """Rebuild an accountant; its RDP is recomputed from the stored mechanisms."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise InvalidParameterError(
                "state", state, "not a dpledger accountant state (version 1)"
            )
        accountant = cls(orders=state.get("orders"))
        for entry in state.get("entries", []):
            accountant.compose(mechanism_from_dict(entry["mechanism"]), entry["count"])
        return accountant

    @classmethod
    def from_json(cls, text: str) -> RdpAccountant:
        """Inverse of :meth:`to_json`."""
        try:
            state = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidParameterError("state", text[:40], f"invalid JSON ({error.msg})") from None
        return cls.from_dict(state)
