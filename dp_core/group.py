"""User-level (group) privacy of DP-SGD: users contributing up to K records.

Two bounds, each sound on its own:

* **RDP** (Mironov 2017, "Renyi Differential Privacy", Prop. 2): if f is (alpha, eps)-RDP, g is
  2^c-stable (datasets at distance 1 map to datasets at distance at most 2^c) and
  alpha >= 2^(c+1), then f o g is (alpha / 2^c, 3^c eps)-RDP. A user with K records changes the
  dataset by K <= 2^c records with c = ceil(log2 K), so the whole run's RDP curve at order
  beta >= 2 is at most 3^c RDP(2^c beta); orders beta < 2 are not covered (the condition
  alpha >= 2^(c+1)). K = 1 (c = 0) is example-level privacy itself.
* **PLD**: with Poisson sampling at rate q, a group of K records is absent from a step with
  probability (1-q)^K; when present, its clipped gradients sum to a vector of norm at most K C.
  Each step is therefore a mixture over the group's inclusion pattern, and by joint convexity of
  the hockey-stick divergence (Barthe & Olmedo 2013) plus the post-processing that shrinks a
  Gaussian shift (x -> (a/b) x + N(0, s^2 (1 - a^2/b^2)) maps N(b, s^2) to N(a, s^2) and fixes
  N(0, s^2)), the step is dominated by the Poisson-subsampled Gaussian with rate 1 - (1-q)^K and
  sensitivity K C, i.e. noise multiplier sigma / K. Domination is preserved by composition (Zhu,
  Dong & Wang 2022, Lemma 9), so the PLD accountant of :mod:`dp_core.pld` applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dp_core.calibration import epsilon_of_schedule
from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import Grouped, SampledGaussianSchedule
from dp_core.pld import SCHEDULE_DISCRETIZATION, compute_epsilon_pld
from dp_core.rdp.compose import compute_rdp, register_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS, FloatArray
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, probability

__all__ = [
    "MAX_GROUP_ORDER",
    "UserLevelEpsilon",
    "compute_user_epsilon",
    "GroupOrders",
    "group_exponent",
    "group_order_map",
    "group_rdp",
    "group_rdp_at_orders",
    "group_sample_rate",
]


@dataclass(frozen=True)
class UserLevelEpsilon:
    """Epsilon of a run for users with up to ``records_per_user`` records.

    Attributes:
        records_per_user: K.
        epsilon: min(epsilon_rdp, epsilon_pld): both bound the same quantity, so the smaller holds.
        epsilon_rdp: RDP bound (Mironov 2017, Prop. 2) converted at ``delta``.
        order: Renyi order beta of ``epsilon_rdp`` (of the group curve; the run's own RDP is read
            at 2^c beta).
        epsilon_pld: PLD bound (subsampled Gaussian with rate 1-(1-q)^K and noise sigma/K).
        group_sample_rate: 1 - (1-q)^K.
        delta: The delta both epsilons hold for.
    """

    records_per_user: int
    epsilon: float
    epsilon_rdp: float
    order: float
    epsilon_pld: float
    group_sample_rate: float
    delta: float


def group_exponent(records_per_user: int) -> int:
    """Return c = ceil(log2 K): a group of K records is within distance 2^c."""
    k = non_negative_int("records_per_user", records_per_user)
    if k < 1:
        raise InvalidParameterError("records_per_user", records_per_user, "must be >= 1")
    return (k - 1).bit_length()


def group_rdp(
    *, mechanism: object, orders: FloatArray, records_per_user: int
) -> tuple[FloatArray, FloatArray]:
    """RDP of ``mechanism`` for groups of K records (Mironov 2017, Prop. 2).

    Returns:
        The orders beta >= 2 of ``orders`` kept (all of them for K = 1) and the bound
        3^c RDP(2^c beta) at each.
    """
    c = group_exponent(records_per_user)
    beta = np.asarray(orders, dtype=np.float64)
    if c > 0:
        beta = beta[beta >= 2.0]  # alpha = 2^c beta >= 2^(c+1)
    return beta, group_rdp_at_orders(
        mechanism=mechanism, orders=beta, records_per_user=records_per_user
    )


def group_rdp_at_orders(
    *,
    mechanism: object,
    orders: FloatArray,
    records_per_user: int,
    max_order: float = math.inf,
) -> FloatArray:
    """RDP bound of ``mechanism`` for groups of K records at EVERY order of ``orders``.

    The one definition of the group transform (Mironov 2017, "Renyi Differential Privacy",
    Prop. 2): with c = ceil(log2 K) (K is rounded UP to the power of two 2^c, since a change of
    K records is also a change of at most 2^c), an (alpha, eps)-RDP mechanism is
    (alpha / 2^c, 3^c eps)-RDP for groups whenever alpha >= 2^(c+1). The bound AT a group
    order beta therefore reads the mechanism's curve at alpha = 2^c beta:

        RDP_K(beta) <= 3^c RDP(2^c beta)                  for beta >= 2,
        RDP_K(beta) <= RDP_K(2) <= 3^c RDP(2^(c+1))       for 1 < beta < 2,

    the second line because the Renyi divergence is non-decreasing in its order (van Erven &
    Harremoes 2014, "Renyi divergence and Kullback-Leibler divergence", Theorem 3), applied to
    the group neighbours' output distributions. K = 1 (c = 0) is the curve itself.

    Args:
        mechanism: A dp_core mechanism (anything :func:`dp_core.rdp.compose.compute_rdp` takes).
        orders: The group orders beta > 1 at which a bound is wanted.
        records_per_user: K >= 1.
        max_order: Orders 2^c max(beta, 2) above this are not evaluated; their bound is +inf
            (trivially sound; it bounds the evaluation's cost).

    Returns:
        One bound per order of ``orders`` (same shape).
    """
    group = group_order_map(orders=orders, records_per_user=records_per_user, max_order=max_order)
    result = np.full(group.orders.shape, np.inf)
    if np.any(group.inside):
        rdp = np.asarray(compute_rdp(mechanism, group.orders[group.inside]), dtype=np.float64)
        result[group.inside] = group.factor * rdp
    return result


@dataclass(frozen=True)
class GroupOrders:
    """Where to read a mechanism's RDP curve for a group bound, and by how much to scale it.

    Attributes:
        orders: alpha = 2^c max(beta, 2) for each group order beta (beta itself for K = 1).
        inside: Whether alpha is within the evaluation limit (elsewhere the bound is +inf).
        factor: 3^c (1 for K = 1).
    """

    orders: FloatArray
    inside: npt.NDArray[np.bool_]
    factor: float


def group_order_map(
    *, orders: FloatArray, records_per_user: int, max_order: float = math.inf
) -> GroupOrders:
    """Map group orders beta to the mechanism's orders of :func:`group_rdp_at_orders`' bound.

    The group RDP at beta is at most ``factor * RDP(orders[i])`` (Mironov 2017, Prop. 2, with
    monotonicity in the order below beta = 2; see :func:`group_rdp_at_orders`), so callers that
    evaluate RDP their own way (e.g. one matrix for many noise levels) apply the same transform.
    """
    c = group_exponent(records_per_user)
    beta = np.asarray(orders, dtype=np.float64)
    # 2^c * x is exact in floating point (a power-of-two scaling), so no order is rounded down.
    alpha = beta.copy() if c == 0 else 2.0**c * np.maximum(beta, 2.0)
    return GroupOrders(alpha, alpha <= max_order, 3.0**c)


def group_sample_rate(*, sample_rate: float, records_per_user: int) -> float:
    """Probability 1 - (1-q)^K that a Poisson sample holds at least one of K records."""
    q = probability("sample_rate", sample_rate)
    group_exponent(records_per_user)  # validates K >= 1
    k = int(records_per_user)
    return -math.expm1(k * math.log1p(-q)) if q < 1.0 else 1.0


def compute_user_epsilon(
    *,
    sample_rate: float,
    schedule: NoiseSchedule,
    steps: int,
    delta: float,
    records_per_user: int,
    orders: object = None,
    discretization: float | None = None,
    max_fft_points: int | None = None,
) -> UserLevelEpsilon:
    """User-level epsilon of ``steps`` DP-SGD steps for users with up to K records.

    K = 1 gives exactly the example-level numbers (the refined RDP epsilon of
    :func:`dp_core.calibration.epsilon_of_schedule` and :func:`dp_core.pld.compute_epsilon_pld`).
    ``discretization`` overrides the PLD's grid width for K > 1 (a coarser grid bounds the work
    and stays an upper bound; default :data:`dp_core.pld.SCHEDULE_DISCRETIZATION`);
    ``max_fft_points`` is passed to :func:`dp_core.pld.compute_epsilon_pld`.
    """
    delta = open_probability("delta", delta)
    k = non_negative_int("records_per_user", records_per_user)
    c = group_exponent(k)
    rate = group_sample_rate(sample_rate=sample_rate, records_per_user=k)
    pld = compute_epsilon_pld(
        sample_rate=rate,
        schedule=schedule.scaled(1.0 / k),
        steps=steps,
        delta=delta,
        # K > 1 divides sigma by K, which widens the loss range K^2-fold: the coarser grid keeps
        # the cost bounded (still an upper bound, slightly looser).
        discretization=None if k == 1 else discretization or SCHEDULE_DISCRETIZATION,
        max_fft_points=max_fft_points,
    )
    if c == 0:
        report = epsilon_of_schedule(
            sample_rate=sample_rate, schedule=schedule, steps=steps, delta=delta, orders=orders
        )
        return _result(k, report.epsilon, report.order, pld.epsilon, rate, delta)
    mechanism = SampledGaussianSchedule(sample_rate=sample_rate, schedule=schedule, steps=steps)
    grid = DEFAULT_ORDERS if orders is None else np.asarray(orders, dtype=np.float64)
    beta, rdp = group_rdp(mechanism=mechanism, orders=grid, records_per_user=k)
    if beta.size == 0:
        raise InvalidParameterError("orders", orders, "group privacy needs orders >= 2")
    result = rdp_to_epsilon(orders=beta, rdp=rdp, delta=delta, warn=False)
    return _result(k, result.epsilon, result.order, pld.epsilon, rate, delta)


def _result(
    k: int, epsilon_rdp: float, order: float, epsilon_pld: float, rate: float, delta: float
) -> UserLevelEpsilon:
    best = min(epsilon_rdp, epsilon_pld)
    return UserLevelEpsilon(k, best, epsilon_rdp, order, epsilon_pld, rate, delta)


#: Orders 2^c beta above this are not evaluated for a :class:`~dp_core.mechanisms.Grouped`
#: description: their bound is +inf (trivially sound), which bounds an evaluation's cost.
MAX_GROUP_ORDER = 1e6


def _grouped_rdp(mechanism: Grouped, orders: FloatArray) -> FloatArray:
    """RDP of a :class:`~dp_core.mechanisms.Grouped` description (Mironov 2017, Prop. 2)."""
    return group_rdp_at_orders(
        mechanism=mechanism.inner,
        orders=orders,
        records_per_user=mechanism.records,
        max_order=MAX_GROUP_ORDER,
    )


register_rdp(Grouped, _grouped_rdp)
