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
* **Classical** (group privacy of approximate DP, Dwork & Roth 2014, Thm. 2.2 with delta): if
  the run is (eps1, delta1)-DP for one record, chaining K neighbours x_0, ..., x_K gives
  P[M(x_0) in S] <= e^{K eps1} P[M(x_K) in S] + delta1 sum_{i<K} e^{i eps1}, i.e.
  (K eps1, delta1 (e^{K eps1} - 1) / (e^{eps1} - 1))-DP, at most K e^{(K-1) eps1} delta1. Any
  point (eps1, delta1) of the example-level curve (RDP or PLD, whichever is smaller there) whose
  group delta is <= delta gives a bound; :func:`classical_group_epsilon` searches delta1.

:func:`user_level_epsilon` reports the smallest of the three (each bounds the same quantity) and
names it. The ledger's admission filter stays on the RDP bound alone: it composes per order
across runs (Feldman & Zrnic 2021), which the (epsilon, delta) bounds cannot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from dp_core.calibration import epsilon_of_schedule
from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import DpCoreError, InvalidParameterError
from dp_core.mechanisms import Grouped, SampledGaussianSchedule
from dp_core.pld import SCHEDULE_DISCRETIZATION, compute_epsilon_pld, sampled_gaussian_pld_curve
from dp_core.rdp.compose import compute_rdp, register_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS, FloatArray
from dp_core.schedules import NoiseSchedule
from dp_core.validation import non_negative_int, open_probability, probability

__all__ = [
    "MAX_GROUP_ORDER",
    "USER_LEVEL_BOUNDS",
    "UserLevelEpsilon",
    "classical_group_epsilon",
    "user_level_epsilon",
    "GroupOrders",
    "group_exponent",
    "group_order_map",
    "group_rdp",
    "group_rdp_at_orders",
    "group_sample_rate",
]


#: The bounds :func:`user_level_epsilon` takes the smallest of, in the order ties are named.
USER_LEVEL_BOUNDS = ("rdp", "pld", "classical")


@dataclass(frozen=True)
class UserLevelEpsilon:
    """Epsilon of a run for users with up to ``records_per_user`` records.

    Attributes:
        records_per_user: K.
        epsilon: The smallest of epsilon_rdp, epsilon_pld and epsilon_classical: each bounds the
            same quantity, so the smallest holds.
        epsilon_rdp: RDP bound (Mironov 2017, Prop. 2) converted at ``delta``.
        order: Renyi order beta of ``epsilon_rdp`` (of the group curve; the run's own RDP is read
            at 2^c beta).
        epsilon_pld: PLD bound (subsampled Gaussian with rate 1-(1-q)^K and noise sigma/K); inf
            when beyond the work bound.
        group_sample_rate: 1 - (1-q)^K.
        delta: The delta every epsilon holds for.
        epsilon_classical: K eps1 from the example-level point (eps1, example_delta) whose group
            delta is <= ``delta`` (Dwork & Roth 2014, Thm. 2.2 with delta).
        example_delta: delta1 of that point (``delta`` for K = 1).
        bound: Which of :data:`USER_LEVEL_BOUNDS` gave ``epsilon``.
    """

    records_per_user: int
    epsilon: float
    epsilon_rdp: float
    order: float
    epsilon_pld: float
    group_sample_rate: float
    delta: float
    epsilon_classical: float = math.inf
    example_delta: float = math.nan
    bound: str = "rdp"


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


def classical_group_epsilon(
    *, example_epsilon: Callable[[float], float], delta: float, records_per_user: int
) -> tuple[float, float]:
    """Best classical group bound over the example-level curve: (K eps1, delta1), or (inf, nan).

    ``example_epsilon(delta1)`` must be an upper bound of the run's example-level epsilon at
    delta1. A point is feasible when delta1 (e^{K eps1} - 1) / (e^{eps1} - 1) <= delta (the
    chain of K neighbours, see the module docstring), checked in log space with a 1e-12 margin.
    delta1 is searched on a log grid over 40 decades below delta / K, then refined by bisection
    between the largest feasible grid point and the next one; every returned point is feasible.
    """
    k = records_per_user
    log_delta = math.log(delta)

    def feasible(log_d1: float) -> float | None:
        eps1 = example_epsilon(math.exp(log_d1))
        if not math.isfinite(eps1):
            return None
        spread = float(special.logsumexp(eps1 * np.arange(k)))  # log sum_{i<K} e^{i eps1}
        return eps1 if log_d1 + spread <= log_delta - 1e-12 else None

    top = log_delta - math.log(k)
    grid = np.linspace(top - 40.0 * math.log(10.0), top, 49)
    found = [(g, feasible(float(g))) for g in grid]
    points = [(float(g), e) for g, e in found if e is not None]
    if not points:
        return math.inf, math.nan
    lo = max(g for g, _ in points)
    i = int(np.searchsorted(grid, lo))
    if i + 1 < grid.size:
        hi = float(grid[i + 1])
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            eps1 = feasible(mid)
            if eps1 is None:
                hi = mid
            else:
                lo = mid
                points.append((mid, eps1))
    best_log, best = min(points, key=lambda p: p[1])
    return math.nextafter(k * best, math.inf), math.exp(best_log)


def _example_curve(
    *, sample_rate: float, schedule: NoiseSchedule, steps: int, orders: FloatArray,
    max_fft_points: int | None,
) -> Callable[[float], float]:  # fmt: skip
    """Example-level epsilon at any delta1: the smaller of the RDP (on ``orders``) and PLD ones."""
    mechanism = SampledGaussianSchedule(sample_rate=sample_rate, schedule=schedule, steps=steps)
    rdp = np.asarray(compute_rdp(mechanism, orders), dtype=np.float64)
    try:
        curve = sampled_gaussian_pld_curve(
            sample_rate=sample_rate, schedule=schedule, steps=steps, max_fft_points=max_fft_points
        )
        pld: Callable[[float], float] = curve.epsilon
    except InvalidParameterError:
        raise
    except DpCoreError:  # beyond the work bound: the RDP curve alone
        pld = lambda _delta: math.inf  # noqa: E731
    return lambda d1: min(
        rdp_to_epsilon(orders=orders, rdp=rdp, delta=d1, warn=False).epsilon, pld(d1)
    )


def user_level_epsilon(
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

    The smallest of the RDP, PLD and classical group bounds (module docstring), naming the
    winner. K = 1 gives exactly the example-level numbers (the refined RDP epsilon of
    :func:`dp_core.calibration.epsilon_of_schedule` and :func:`dp_core.pld.compute_epsilon_pld`).
    ``discretization`` overrides the group PLD's grid width for K > 1 (a coarser grid bounds the
    work and stays an upper bound; default :data:`dp_core.pld.SCHEDULE_DISCRETIZATION`);
    ``max_fft_points`` bounds each PLD composition: one beyond it is "not computed" (inf).
    """
    delta = open_probability("delta", delta)
    k = non_negative_int("records_per_user", records_per_user)
    c = group_exponent(k)
    rate = group_sample_rate(sample_rate=sample_rate, records_per_user=k)
    pld = _group_pld(sample_rate, schedule, steps, delta, k, discretization, max_fft_points)
    if c == 0:
        report = epsilon_of_schedule(
            sample_rate=sample_rate, schedule=schedule, steps=steps, delta=delta, orders=orders
        )
        return user_level_result(
            k, (report.epsilon, report.order), pld, rate, delta,
            (min(report.epsilon, pld), delta),
        )  # fmt: skip
    mechanism = SampledGaussianSchedule(sample_rate=sample_rate, schedule=schedule, steps=steps)
    grid = DEFAULT_ORDERS if orders is None else np.asarray(orders, dtype=np.float64)
    beta, rdp = group_rdp(mechanism=mechanism, orders=grid, records_per_user=k)
    if beta.size == 0:
        raise InvalidParameterError("orders", orders, "group privacy needs orders >= 2")
    result = rdp_to_epsilon(orders=beta, rdp=rdp, delta=delta, warn=False)
    curve = _example_curve(
        sample_rate=sample_rate, schedule=schedule, steps=steps, orders=grid,
        max_fft_points=max_fft_points,
    )  # fmt: skip
    classical = classical_group_epsilon(example_epsilon=curve, delta=delta, records_per_user=k)
    return user_level_result(k, (result.epsilon, result.order), pld, rate, delta, classical)


def _group_pld(
    q: float, schedule: NoiseSchedule, steps: int, delta: float, k: int,
    discretization: float | None, max_fft_points: int | None,
) -> float:  # fmt: skip
    """PLD bound for groups of K (module docstring); inf when beyond ``max_fft_points``."""
    rate = group_sample_rate(sample_rate=q, records_per_user=k)
    try:
        return compute_epsilon_pld(
            sample_rate=rate,
            schedule=schedule.scaled(1.0 / k),
            steps=steps,
            delta=delta,
            # K > 1 divides sigma by K, which widens the loss range K^2-fold: the coarser grid
            # keeps the cost bounded (still an upper bound, slightly looser).
            discretization=None if k == 1 else discretization or SCHEDULE_DISCRETIZATION,
            max_fft_points=max_fft_points,
        ).epsilon
    except InvalidParameterError:
        raise
    except DpCoreError:  # the composed window exceeds max_fft_points: not computed
        return math.inf


def user_level_result(
    k: int, rdp: tuple[float, float], epsilon_pld: float, rate: float, delta: float,
    classical: tuple[float, float],
) -> UserLevelEpsilon:  # fmt: skip
    """Assemble a :class:`UserLevelEpsilon` from its bounds: the smallest wins (ties: first named).

    ``rdp`` is (epsilon, order); ``classical`` is (epsilon, example delta).
    """
    values = dict(zip(USER_LEVEL_BOUNDS, (rdp[0], epsilon_pld, classical[0]), strict=True))
    bound = min(USER_LEVEL_BOUNDS, key=lambda name: values[name])
    return UserLevelEpsilon(
        k, values[bound], rdp[0], rdp[1], epsilon_pld, rate, delta, classical[0], classical[1],
        bound,
    )  # fmt: skip


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
