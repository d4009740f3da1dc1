"""PATE: noisy-max aggregation of teacher votes, its ledger records and its privacy report.

Vocabulary. ``votes`` is a (queries x classes) array of vote counts: each of the teachers adds one
vote per query (``votes_from_predictions`` builds it from a (teachers x queries) array of labels).
The noise is added to every count and is measured in votes:

* :class:`GNMaxQueries` (Papernot et al. 2018, "Scalable Private Learning with PATE"):
  ``noise_multiplier`` is sigma, the std of the Gaussian noise on each count. A count has
  sensitivity 1, so sigma is also the noise multiplier in dpledger's sense.
* :class:`LNMaxQueries` (Papernot et al. 2017, "Semi-supervised Knowledge Transfer for Deep
  Learning from Private Training Data"): ``noise_scale`` is b, the scale of the Laplace noise on
  each count (the paper's 1/gamma).

The records say *what the ledger charges*: ``queries`` answers of the aggregator, accounted with
the data-independent RDP of :mod:`dp_core.rdp.pate`. They are registered in the RDP dispatch table
and in the mechanism JSON codec when this module is imported (``import dp_core`` does it), so
``compute_rdp``, ``RdpAccountant.compose`` and ``mechanism_to_dict``/``mechanism_from_dict`` accept
them like any other mechanism.

:func:`analyze_votes` reports the data-independent epsilon next to the data-dependent one
(Papernot et al. 2018, Thm. 6 for GNMax; Papernot et al. 2017, Thm. 2 for LNMax). The
data-dependent epsilon is computed from the votes, so publishing it is not differentially private
(the 2018 paper releases it through smooth sensitivity, which is not implemented here); it is for
reporting only and must never decide admission.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from dp_core.accountant import EpsilonReport, refine_epsilon
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import Gaussian, Laplace, register_mechanism_codec
from dp_core.randomness import (
    PATE_STREAM,
    discrete_gaussian_noise,
    noise_random,
    stream_generator,
)
from dp_core.rdp.compose import register_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS, FloatArray, validate_orders
from dp_core.rdp.pate import (
    log_q_gnmax,
    log_q_lnmax,
    rdp_gnmax,
    rdp_gnmax_data_dependent,
    rdp_lnmax,
    rdp_lnmax_data_dependent,
)
from dp_core.validation import non_negative_int, open_probability, positive_float

__all__ = [
    "AGGREGATORS",
    "GNMaxQueries",
    "LNMaxQueries",
    "PateMechanism",
    "PateReport",
    "aggregate_votes",
    "analyze_votes",
    "mechanism_for_gaussian_release",
    "mechanism_for_laplace_release",
    "pate_mechanism",
    "validate_votes",
    "votes_from_predictions",
]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class GNMaxQueries:
    """``queries`` answers of GNMax: argmax of the vote counts plus N(0, sigma^2) noise on each.

    Attributes:
        noise_multiplier: sigma, the std of the Gaussian noise on each vote count, in votes.
        queries: Number of answered queries (each is ``(alpha, alpha / sigma^2)``-RDP).
    """

    noise_multiplier: float
    queries: int = 1

    def __post_init__(self) -> None:
        sigma = positive_float("noise_multiplier", self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "queries", non_negative_int("queries", self.queries))


@dataclass(frozen=True, kw_only=True)
class LNMaxQueries:
    """``queries`` answers of LNMax: argmax of the vote counts plus Laplace(b) noise on each.

    Attributes:
        noise_scale: b, the scale of the Laplace noise on each vote count, in votes (1/gamma).
        queries: Number of answered queries (each is (2/b, 0)-DP; RDP in :mod:`dp_core.rdp.pate`).
    """

    noise_scale: float
    queries: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_scale", positive_float("noise_scale", self.noise_scale))
        object.__setattr__(self, "queries", non_negative_int("queries", self.queries))


PateMechanism: TypeAlias = GNMaxQueries | LNMaxQueries


@dataclass(frozen=True)
class _Aggregator:
    """How one aggregator adds noise and is accounted (one row of the dispatch table)."""

    name: str
    noise_of: Callable[[Any], float]
    #: (counts, noise, seed) -> noisy counts, whose row-wise argmax is the answer.
    noisy: Callable[[FloatArray, float, int | None], npt.NDArray[Any]]
    rdp: Callable[[float, FloatArray], FloatArray]
    log_q: Callable[[FloatArray, float], FloatArray]
    rdp_data_dependent: Callable[[FloatArray, float, FloatArray], FloatArray]


_AGGREGATORS: dict[type, _Aggregator] = {
    GNMaxQueries: _Aggregator(
        name="gnmax",
        noise_of=lambda m: float(m.noise_multiplier),
        noisy=lambda counts, s, seed: _discrete_gaussian_counts(counts, s, seed),
        rdp=lambda s, a: rdp_gnmax(noise_multiplier=s, orders=a),
        log_q=lambda v, s: log_q_gnmax(v, noise_multiplier=s),
        rdp_data_dependent=lambda lq, s, a: rdp_gnmax_data_dependent(
            log_q=lq, noise_multiplier=s, orders=a
        ),
    ),
    LNMaxQueries: _Aggregator(
        name="lnmax",
        noise_of=lambda m: float(m.noise_scale),
        noisy=lambda counts, b, seed: (
            counts + stream_generator(seed, stream=PATE_STREAM).laplace(0.0, b, size=counts.shape)
        ),
        rdp=lambda b, a: rdp_lnmax(noise_scale=b, orders=a),
        log_q=lambda v, b: log_q_lnmax(v, noise_scale=b),
        rdp_data_dependent=lambda lq, b, a: rdp_lnmax_data_dependent(
            log_q=lq, noise_scale=b, orders=a
        ),
    ),
}

AGGREGATORS: tuple[str, ...] = ("gnmax", "lnmax")
_BY_NAME: dict[str, Callable[[float, int], PateMechanism]] = {
    "gnmax": lambda noise, queries: GNMaxQueries(noise_multiplier=noise, queries=queries),
    "lnmax": lambda noise, queries: LNMaxQueries(noise_scale=noise, queries=queries),
}


def _aggregator(mechanism: object) -> _Aggregator:
    try:
        return _AGGREGATORS[type(mechanism)]
    except KeyError:
        raise InvalidParameterError(
            "mechanism", mechanism, "must be GNMaxQueries or LNMaxQueries"
        ) from None


def _data_independent_rdp(mechanism: PateMechanism, orders: FloatArray) -> FloatArray:
    """RDP of ``queries`` answers: the per-query RDP times ``queries`` (Mironov 2017, Prop. 1)."""
    if mechanism.queries == 0:
        return np.zeros(np.asarray(orders).size)
    agg = _aggregator(mechanism)
    return mechanism.queries * agg.rdp(agg.noise_of(mechanism), orders)


register_rdp(GNMaxQueries, _data_independent_rdp)
register_rdp(LNMaxQueries, _data_independent_rdp)
register_mechanism_codec(
    GNMaxQueries,
    "pate_gnmax",
    lambda m: {"noise_multiplier": m.noise_multiplier, "queries": m.queries},
    lambda d: GNMaxQueries(noise_multiplier=d["noise_multiplier"], queries=d["queries"]),
)
register_mechanism_codec(
    LNMaxQueries,
    "pate_lnmax",
    lambda m: {"noise_scale": m.noise_scale, "queries": m.queries},
    lambda d: LNMaxQueries(noise_scale=d["noise_scale"], queries=d["queries"]),
)


def pate_mechanism(aggregator: str, *, noise_multiplier: float, queries: int) -> PateMechanism:
    """Return the ledger record for ``queries`` answers of the named aggregator.

    Args:
        aggregator: ``"gnmax"`` or ``"lnmax"``.
        noise_multiplier: Noise on each vote count, in votes: the Gaussian std sigma (gnmax) or
            the Laplace scale b = 1/gamma (lnmax).
        queries: Number of answered queries.
    """
    try:
        build = _BY_NAME[aggregator]
    except (KeyError, TypeError):
        raise InvalidParameterError("aggregator", aggregator, "must be gnmax or lnmax") from None
    return build(noise_multiplier, queries)


# --- votes ----------------------------------------------------------------------------------


def _as_float_array(name: str, value: object) -> FloatArray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(name, type(value).__name__, "must be a numeric array") from None
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise InvalidParameterError(name, "array", "entries must be finite integers")
    return array


def validate_votes(votes: object) -> FloatArray:
    """Return ``votes`` as a (queries x classes) float array of non-negative integer counts.

    Raises:
        InvalidParameterError: if the array is not 2-D with at least 2 classes, or holds NaN,
            infinite, fractional or negative entries.
    """
    array = _as_float_array("votes", votes)
    if array.ndim != 2 or array.shape[1] < 2:
        raise InvalidParameterError(
            "votes", f"shape {array.shape}", "must be a (queries x classes) array, classes >= 2"
        )
    if np.any(array < 0):
        raise InvalidParameterError("votes", "array", "vote counts must be >= 0")
    return array


def votes_from_predictions(predictions: object, *, num_classes: int | None = None) -> IntArray:
    """Count the teachers' labels: (teachers x queries) labels -> (queries x classes) votes.

    Args:
        predictions: Integer labels in [0, num_classes), one row per teacher.
        num_classes: Number of classes; default max label + 1 (at least 2).
    """
    labels = _as_float_array("predictions", predictions)
    if labels.ndim != 2 or labels.shape[0] < 1:
        raise InvalidParameterError(
            "predictions", f"shape {labels.shape}", "must be a (teachers x queries) array"
        )
    top = int(labels.max()) + 1 if labels.size else 0
    classes = max(2, top) if num_classes is None else non_negative_int("num_classes", num_classes)
    if classes < 2:
        raise InvalidParameterError("num_classes", num_classes, "must be >= 2")
    if np.any(labels < 0) or top > classes:
        raise InvalidParameterError(
            "predictions", "array", f"labels must be in [0, {classes}) (num_classes = {classes})"
        )
    queries = labels.shape[1]
    flat = labels.astype(np.int64) + classes * np.arange(queries, dtype=np.int64)[None, :]
    counts = np.bincount(flat.ravel(), minlength=queries * classes)
    return counts.reshape(queries, classes).astype(np.int64)


def _checked(votes: object, mechanism: PateMechanism) -> tuple[FloatArray, _Aggregator]:
    agg = _aggregator(mechanism)
    counts = validate_votes(votes)
    if counts.shape[0] != mechanism.queries:
        raise InvalidParameterError(
            "queries",
            mechanism.queries,
            f"must equal the number of vote rows ({counts.shape[0]})",
        )
    return counts, agg


# --- aggregation ------------------------------------------------------------------------------


def aggregate_votes(
    votes: object, mechanism: PateMechanism, *, seed: int | None = None
) -> IntArray:
    """Return the noisy labels: per row, the argmax of the counts plus fresh noise.

    GNMax adds the exact discrete Gaussian on the grid of 1/:data:`GNMAX_GRANULARITY` votes
    (Canonne, Kamath & Steinke 2020, :mod:`dp_core.randomness`), whose RDP is exactly the
    data-independent alpha / sigma^2 that is charged. LNMax adds float Laplace noise: the
    exact discrete Laplace has a *larger* RDP curve than the continuous one the ledger charges
    (e.g. scale 1, order 4: 0.896 vs 0.814), so swapping it in would under-charge; only the
    argmax (a label, not a noisy value) is released, which leaves no low bits to attack.

    Args:
        votes: (queries x classes) vote counts; ``mechanism.queries`` must equal the rows.
        mechanism: :class:`GNMaxQueries` or :class:`LNMaxQueries`: the aggregator and its noise.
        seed: None (the default): secret randomness (OS entropy, ``secrets.SystemRandom``). A
            non-negative int makes the noise reproducible: the guarantee then does not hold
            against anyone who knows it.
    """
    counts, agg = _checked(votes, mechanism)
    if seed is not None:
        seed = non_negative_int("seed", seed)
    noisy = agg.noisy(counts, agg.noise_of(mechanism), seed)
    return np.asarray(np.argmax(noisy, axis=1), dtype=np.int64)


#: GNMax's noisy counts live on the grid of 1/1024 votes: ties (argmax: the lowest class) are
#: then about as rare as under continuous noise, and the RDP is the continuous Gaussian's.
GNMAX_GRANULARITY = 1024


def _discrete_gaussian_counts(counts: FloatArray, sigma: float, seed: int | None) -> IntArray:
    """Counts x 1024 plus N_Z(0, (1024 sigma)^2) noise: exact, in integers (grid units)."""
    noise = discrete_gaussian_noise(
        tuple(counts.shape), sigma=sigma, granularity=GNMAX_GRANULARITY,
        rng=noise_random(seed, stream=PATE_STREAM),
    )  # fmt: skip
    return np.asarray(counts.astype(np.int64) * GNMAX_GRANULARITY + noise, dtype=np.int64)


# --- privacy report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PateReport:
    """Epsilon of a batch of PATE answers: data-independent and data-dependent, side by side.

    Attributes:
        mechanism: The ledger record (what is charged).
        data_independent: Epsilon from the data-independent RDP: a DP guarantee, chargeable.
        data_dependent: Epsilon from the data-dependent RDP of these votes, never above
            ``data_independent``. It depends on the votes, so it is not itself private: report it,
            never admit on it.
    """

    mechanism: PateMechanism
    data_independent: EpsilonReport
    data_dependent: EpsilonReport

    @property
    def aggregator(self) -> str:
        """``"gnmax"`` or ``"lnmax"``."""
        return _aggregator(self.mechanism).name

    @property
    def delta(self) -> float:
        """The delta both epsilons hold for."""
        return self.data_independent.delta

    @property
    def epsilon_data_independent(self) -> float:
        """The chargeable epsilon."""
        return self.data_independent.epsilon

    @property
    def epsilon_data_dependent(self) -> float:
        """The data-dependent epsilon (reporting only)."""
        return self.data_dependent.epsilon


_CHUNK = 2048  # rows of the (queries x orders) matrix evaluated at once, to bound memory


def _sum_over_queries(
    function: Callable[[FloatArray], FloatArray], log_q: FloatArray, size: int
) -> FloatArray:
    """Sum ``function(log_q)`` (rows: queries) over queries; equal log q values are done once."""
    values, counts = np.unique(log_q, return_counts=True)
    total = np.zeros(size)
    for start in range(0, values.size, _CHUNK):
        total = total + counts[start : start + _CHUNK] @ function(values[start : start + _CHUNK])
    return total


def _epsilon(
    rdp: Callable[[FloatArray], FloatArray], grid: FloatArray, delta: float, warn: bool
) -> EpsilonReport:
    def rdp_at(order: float) -> float:
        return float(rdp(np.array([order]))[0])

    return refine_epsilon(orders=grid, rdp=rdp(grid), delta=delta, rdp_at=rdp_at, warn=warn)


def analyze_votes(
    votes: object,
    mechanism: PateMechanism,
    *,
    delta: float,
    orders: object = None,
    warn: bool = True,
) -> PateReport:
    """Return the data-independent and data-dependent epsilon of answering ``votes``.

    Both come from RDP summed over the queries (Mironov 2017, Prop. 1), converted with the CKS
    bound and refined over real orders (:func:`dp_core.accountant.refine_epsilon`). The analysis
    uses every row's own counts: unlike PySyft's ``perform_analysis``, which indexes count rows by
    label values, no row is skipped or repeated.

    Args:
        votes: (queries x classes) vote counts; ``mechanism.queries`` must equal the rows.
        mechanism: The aggregator record (:class:`GNMaxQueries` or :class:`LNMaxQueries`).
        delta: Target delta in (0, 1).
        orders: Renyi orders (default :data:`dp_core.rdp.orders.DEFAULT_ORDERS`).
        warn: Emit ``GridEdgeWarning`` when an optimum sits at the grid's edge.
    """
    counts, agg = _checked(votes, mechanism)
    delta = open_probability("delta", delta)
    grid = validate_orders(DEFAULT_ORDERS if orders is None else orders)
    noise = agg.noise_of(mechanism)
    log_q = agg.log_q(counts, noise)

    def dependent(a: FloatArray) -> FloatArray:
        return _sum_over_queries(lambda lq: agg.rdp_data_dependent(lq, noise, a), log_q, a.size)

    independent = _epsilon(lambda a: _data_independent_rdp(mechanism, a), grid, delta, warn)
    dependent_report = _epsilon(dependent, grid, delta, warn)
    # The data-dependent RDP is <= the data-independent one at every order, but the refinement
    # searches other brackets; and the data-independent bound holds for these votes too.
    if dependent_report.epsilon > independent.epsilon:
        dependent_report = independent
    return PateReport(mechanism, independent, dependent_report)


# --- releases of a statistic --------------------------------------------------------------------


def mechanism_for_gaussian_release(*, sensitivity: float, noise_std: float) -> Gaussian:
    """Return the record of releasing a statistic of L2 ``sensitivity`` plus N(0, noise_std^2).

    The Gaussian mechanism's noise multiplier is std / sensitivity (Mironov 2017, Prop. 7).
    """
    ratio = positive_float("noise_std", noise_std) / positive_float("sensitivity", sensitivity)
    return Gaussian(noise_multiplier=ratio)


def mechanism_for_laplace_release(*, sensitivity: float, noise_scale: float) -> Laplace:
    """Return the record of releasing a statistic of L1 ``sensitivity`` plus Laplace(noise_scale).

    The Laplace mechanism's scale relative to the sensitivity is b / sensitivity (Mironov 2017,
    Prop. 6). For a vector statistic with Laplace noise on each coordinate this is still the worst
    case: the RDP is convex in the shift (a log-sum-exp of affine functions), so it is largest
    when the whole L1 shift falls on one coordinate.
    """
    ratio = positive_float("noise_scale", noise_scale) / positive_float("sensitivity", sensitivity)
    return Laplace(noise_scale=ratio)
