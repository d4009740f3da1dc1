"""User-level DP-FedAvg (McMahan, Ramage, Talwar & Zhang 2018): its ledger record and its RDP.

One round of DP-FedAvg: clients (users) are sampled, each sampled client clips its whole model
update to L2 norm ``clip`` (C), the server sums the clipped updates and adds N(0, (sigma C)^2 I)
once to the sum. The privacy unit is the user: two datasets are neighbours when they differ in all
the data of one user.

* ``sampling="poisson"``: each of the ``users`` is included independently with ``sample_rate`` q.
  Under add/remove-one-user adjacency the sum has sensitivity C, so one round is the
  Poisson-subsampled Gaussian with noise multiplier sigma (Mironov, Talwar & Zhang 2019; McMahan
  et al. 2018, Thm. 1 uses the same moments accountant). The server must divide by the fixed
  expected count qN, never by the observed count (McMahan et al. 2018, Sec. 2, estimator
  f~_f), or the count itself leaks.
* ``sampling="fixed"``: ``clients_per_round`` m of the N users drawn uniformly without
  replacement. Under replace-one-user adjacency the sum moves by at most 2C, so the base Gaussian
  has d^2 = (2C / sigma C)^2 = 4 / sigma^2 and RDP eps(j) = j d^2 / 2. Wang, Balle &
  Kasiviswanathan 2019 ("Subsampled Renyi Differential Privacy and Analytical Moments
  Accountant", AISTATS; arXiv:1808.00087) bound the subsampled mechanism at integer
  alpha >= 2 with gamma = m/N by
  eps(alpha) <= log(1 + sum_{j=2}^{alpha} gamma^j C(alpha,j) T_j) / (alpha - 1), where
  Thm. 9 has T_2 = min{4(e^{eps(2)} - 1), 2 e^{eps(2)}} and T_j = 2 e^{(j-1) eps(j)} (j >= 3;
  eps(inf) = inf leaves 2 in both minima over (e^{eps(inf)} - 1)^j), and the long version's
  Thm. 27 (for mechanisms with one pair of neighbours worst for every Renyi and Pearson-Vajda
  divergence, Def. 26, as the Gaussian's two means at distance 2C are) adds to each minimum
  4 (M_{2 floor(j/2)} M_{2 ceil(j/2)})^(1/2), M_k = E_Q[(P/Q - 1)^k] the Pearson-Vajda moments
  of the Gaussian pair (odd j by Cauchy-Schwarz between even moments). Both terms of every
  minimum are kept, every binomial term is summed (in log space), exactly at integer orders up
  to :data:`PEARSON_VAJDA_MAX_ORDER` (Thm. 9 alone above it, as dp_accounting does). The moments
  are alternating sums with massive cancellation: they are summed in decimal at a precision that
  bounds the error below 1e-20 relative, and rounded up. A fractional order interpolates the
  cumulant (alpha - 1) eps(alpha), which is convex (WBK 2019, Cor. 10), and never exceeds the
  bound at ceil(alpha) (RDP is monotone in the order). The guarantee is under replace-one
  adjacency, the natural one when N is public.
* Quantization (``quantization_step`` s > 0, model ``dimension`` d): secure aggregation sums
  integers, so each clipped update is rounded coordinate-wise to a grid of step s. Stochastic
  rounding moves a coordinate by less than s (nearest rounding by at most s/2), so a rounded
  update has norm at most C' = C + sqrt(d) s. The accounting uses the sensitivity C' with the
  noise std sigma C actually added, i.e. the noise multiplier sigma C / C'. Modular arithmetic
  (SecAgg+) adds nothing as long as the sum does not wrap around, which the workflow must ensure
  (modulus > clients x quantized range).
"""

from __future__ import annotations

import decimal
import functools
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from scipy import special

from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import ADD_REMOVE, REPLACE_ONE, register_mechanism_codec
from dp_core.rdp.compose import register_rdp
from dp_core.rdp.orders import FloatArray
from dp_core.rdp.sampled_gaussian import rdp_sampled_gaussian
from dp_core.validation import non_negative_int, positive_float, probability

__all__ = [
    "SAMPLING_METHODS",
    "DpFedAvgRounds",
    "quantized_sensitivity",
    "rdp_fixed_size_gaussian",
]

SAMPLING_METHODS = ("poisson", "fixed")


def quantized_sensitivity(*, clip: float, quantization_step: float, dimension: int) -> float:
    """Return C' = C + sqrt(d) s, the norm bound of a clipped update after rounding to step s.

    Each coordinate moves by less than s under stochastic rounding (at most s/2 under nearest
    rounding), so the rounding error has L2 norm below sqrt(d) s (triangle inequality).
    """
    if quantization_step == 0.0:
        return clip
    return clip + math.sqrt(dimension) * quantization_step


@dataclass(frozen=True, kw_only=True)
class DpFedAvgRounds:
    """``rounds`` rounds of user-level DP-FedAvg over ``users`` users (see the module docstring).

    Attributes:
        users: N, the number of users (clients) in the federation.
        sampling: ``"poisson"`` (needs ``sample_rate``) or ``"fixed"`` (needs ``clients_per_round``).
        noise_multiplier: sigma; the server adds noise with std sigma * clip to the sum.
        clip: C, the L2 norm every client's whole update is clipped to.
        rounds: Number of rounds charged.
        sample_rate: q for Poisson sampling.
        clients_per_round: m for fixed-size sampling without replacement.
        quantization_step: s, the grid step of secure aggregation's rounding (0: no rounding).
        dimension: d, the number of model parameters (needed when ``quantization_step`` > 0).
    """

    users: int
    sampling: str
    noise_multiplier: float
    clip: float
    rounds: int = 1
    sample_rate: float | None = None
    clients_per_round: int | None = None
    quantization_step: float = 0.0
    dimension: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "users", non_negative_int("users", self.users))
        if self.users < 1:
            raise InvalidParameterError("users", self.users, "must be >= 1")
        set_(self, "noise_multiplier", positive_float("noise_multiplier", self.noise_multiplier))
        set_(self, "clip", positive_float("clip", self.clip))
        set_(self, "rounds", non_negative_int("rounds", self.rounds))
        set_(self, "dimension", non_negative_int("dimension", self.dimension))
        step = float(self.quantization_step)
        if not math.isfinite(step) or step < 0.0:
            raise InvalidParameterError("quantization_step", step, "must be finite and >= 0")
        if step > 0.0 and self.dimension < 1:
            raise InvalidParameterError("dimension", self.dimension, "must be >= 1 when quantized")
        set_(self, "quantization_step", step)
        self._check_sampling()

    def _check_sampling(self) -> None:
        if self.sampling == "poisson":
            if self.sample_rate is None or self.clients_per_round is not None:
                raise InvalidParameterError(
                    "sample_rate", self.sample_rate, "Poisson sampling takes sample_rate only"
                )
            object.__setattr__(self, "sample_rate", probability("sample_rate", self.sample_rate))
        elif self.sampling == "fixed":
            m = self.clients_per_round
            if m is None or self.sample_rate is not None:
                raise InvalidParameterError(
                    "clients_per_round", m, "fixed-size sampling takes clients_per_round only"
                )
            if not 1 <= non_negative_int("clients_per_round", m) <= self.users:
                raise InvalidParameterError("clients_per_round", m, "must be in [1, users]")
        else:
            raise InvalidParameterError(
                "sampling", self.sampling, f"must be one of {', '.join(SAMPLING_METHODS)}"
            )

    @property
    def sensitivity(self) -> float:
        """C', the norm bound of one user's contribution to the sum (quantization included)."""
        return quantized_sensitivity(
            clip=self.clip, quantization_step=self.quantization_step, dimension=self.dimension
        )

    @property
    def neighbouring_relation(self) -> str:
        """Replace-one-user for fixed-size sampling (N public), add/remove-one-user for Poisson."""
        return REPLACE_ONE if self.sampling == "fixed" else ADD_REMOVE

    @property
    def effective_noise_multiplier(self) -> float:
        """Noise std over the sensitivity: sigma C / C'."""
        return self.noise_multiplier * self.clip / self.sensitivity


def _log_binomial(n: int, k: np.ndarray[Any, np.dtype[np.float64]]) -> FloatArray:
    return np.asarray(
        special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1),
        dtype=np.float64,
    )


#: Integer orders up to this one use the Pearson-Vajda terms of WBK Thm. 27 (dp_accounting's cap
#: too); above it, every j >= 3 term is Thm. 9's 2 e^{(j-1) eps(j)} (also a valid bound, cheaper).
PEARSON_VAJDA_MAX_ORDER = 256
#: Above this (sensitivity / std)^2, i.e. below an effective noise multiplier of 1, Thm. 9's
#: terms alone are used (also valid): the Pearson-Vajda terms only help at larger noise (no
#: change measured for sigma <= 2), and their exact moments would need exponents beyond any
#: bounded precision for a nearly noiseless sum (a huge quantized model).
PEARSON_VAJDA_MAX_D2 = 4.0
_PV_ERROR_SCALE = 10**20  # a moment is accepted when its error bound is below 1e-20 of it


def _pv_moments_at(digits: int, d2: float, max_k: int) -> list[tuple[Decimal, Decimal]]:
    """(M_k, error bound) for even k <= max_k, summed at ``digits`` significant digits.

    M_k = sum_i C(k,i) (-1)^(k-i) E_i with E_i = exp(i (i-1) d^2 / 2) = E_Q[(P/Q)^i], built by
    E_{i+1} = E_i r^i with r = e^{d^2} (Decimal(d2) is exact, exp and every product correctly
    rounded, u = 10^(1-digits)): E_i carries a relative error below i^2 u, a term C(k,i) E_i one
    more rounding, the sum k more, so |computed - M_k| <= (k+2)^2 10^(2-digits) sum_i C(k,i) E_i.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = digits
        ctx.Emax, ctx.Emin = decimal.MAX_EMAX, decimal.MIN_EMIN
        ratio = Decimal(d2).exp()
        exps, step = [Decimal(1), Decimal(1)], Decimal(1)
        for _ in range(2, max_k + 1):
            step *= ratio
            exps.append(exps[-1] * step)
        out = []
        for k in range(2, max_k + 1, 2):
            signed, total = Decimal(0), Decimal(0)
            for i in range(k + 1):
                term = math.comb(k, i) * exps[i]
                signed = signed + term if (k - i) % 2 == 0 else signed - term
                total += term
            out.append((signed, (k + 2) ** 2 * total.scaleb(2 - digits)))
        return out


def _pv_moments_upper(d2: float, max_k: int) -> list[Decimal]:
    """Rigorous upper bounds of E_Q[(P/Q - 1)^k], P = N(d, 1), Q = N(0, 1), even k <= max_k.

    The moments are k-th forward differences of E_Q[(P/Q)^i] (see :func:`_pv_moments_at`):
    alternating sums whose terms may exceed the result by hundreds of digits, so floats (and a
    sum in log space) cannot hold them. The sum is done in decimal, at a precision raised until
    every error bound is below 1e-20 of its moment; the bound is then added (toward privacy).
    """
    digits = 50
    while True:
        moments = _pv_moments_at(digits, d2, max_k)
        if all(value > 0 and error * _PV_ERROR_SCALE <= value for value, error in moments):
            return [value + error for value, error in moments]
        digits *= 2  # too few digits for the cancellation somewhere


@functools.lru_cache(maxsize=32)
def _log_pv_moments(d2: float, max_k: int) -> tuple[float, ...]:
    """Logs of rigorous upper bounds of the even Pearson-Vajda moments M_k, k = 0..max_k.

    Index k holds log M_k for even k >= 2 (other indices: nan, unused); ``d2`` is
    (sensitivity / std)^2. Each value is rounded up to the next float above the logarithm.
    """
    out = [math.nan] * (max_k + 1)
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        for n, moment in enumerate(_pv_moments_upper(d2, max_k)):
            # ln at 40 digits is far inside a float's ulp; the next float up rounds it up.
            out[2 * (n + 1)] = math.nextafter(float(moment.ln()), math.inf)
    return tuple(out)


def _log_moment_terms(order: int, d2: float) -> FloatArray:
    """Return log T_j, j = 2..order: each term's bound on the ternary |chi|^j divergence.

    Entry j: min{log 4 + (log M_{2 floor(j/2)} + log M_{2 ceil(j/2)}) / 2, log 2 + (j-1) eps(j)}
    with eps(j) = j d^2 / 2 the Gaussian's RDP: the Pearson-Vajda term of WBK Thm. 27 (odd j by
    Cauchy-Schwarz between the neighbouring even moments) and the term of Thm. 9. Above
    :data:`PEARSON_VAJDA_MAX_ORDER` only the second (Thm. 9 alone, also valid).
    """
    j = np.arange(2, order + 1, dtype=np.float64)
    theorem9 = math.log(2.0) + (j - 1.0) * j * d2 / 2.0
    if order > PEARSON_VAJDA_MAX_ORDER or d2 > PEARSON_VAJDA_MAX_D2:
        # log(e^x - 1) = x + log(1 - e^-x): finite for every x > 0 (expm1 overflows past ~709).
        theorem9[0] = min(theorem9[0], math.log(4.0) + d2 + math.log(-math.expm1(-d2)))
        return theorem9
    log_m = np.asarray(_log_pv_moments(d2, PEARSON_VAJDA_MAX_ORDER))
    ji = j.astype(np.int64)
    pearson = math.log(4.0) + 0.5 * (log_m[2 * (ji // 2)] + log_m[2 * ((ji + 1) // 2)])
    return np.asarray(np.minimum(theorem9, pearson), dtype=np.float64)


@functools.lru_cache(maxsize=4096)
def _log_a_integer(order: int, gamma: float, d2: float) -> float:
    """(order - 1) times the RDP bound at an integer order >= 2 (WBK 2019, Thm. 9 and 27).

    log(1 + sum_{j=2}^{order} gamma^j C(order, j) T_j) with T_j of :func:`_log_moment_terms`,
    summed in log space (logsumexp): the j-th term grows like exp(j^2 d^2 / 2) and overflows a
    float otherwise; log(1 + S) as logaddexp(0, log S), stable for S both tiny and huge.
    """
    j = np.arange(2, order + 1, dtype=np.float64)
    logs = j * math.log(gamma) + _log_binomial(order, j) + _log_moment_terms(order, d2)
    return float(np.logaddexp(0.0, special.logsumexp(logs)))


def _rdp_at(order: float, gamma: float, d2: float) -> float:
    """The bound at a real order > 1: exact at integers, convex interpolation in between.

    f(a) = (a - 1) D_a(P || Q) = log E_Q[(P/Q)^a] is convex in a (Hoelder), so between the
    integers n < a < n + 1 it is at most (n + 1 - a) f(n) + (a - n) f(n + 1) (WBK 2019, Cor. 10;
    f(1) = 0 exactly). RDP is also non-decreasing in the order (van Erven & Harremoes 2014,
    Thm. 3), so the bound at n + 1 holds too; the smaller of the two is charged.
    """
    low = math.floor(order)
    if order == low:
        return _log_a_integer(int(order), gamma, d2) / (order - 1.0)
    high = _log_a_integer(low + 1, gamma, d2)
    at_low = 0.0 if low == 1 else _log_a_integer(low, gamma, d2)
    t = order - low
    interpolated = ((1.0 - t) * at_low + t * high) / (order - 1.0)
    return min(interpolated, high / low)


def rdp_fixed_size_gaussian(
    *, sample_rate: float, noise_multiplier: float, orders: FloatArray
) -> FloatArray:
    """RDP of the Gaussian sum (std sigma C) on m of N users drawn without replacement.

    ``sample_rate`` is gamma = m/N; replace-one adjacency (sensitivity 2C, so the base Gaussian's
    (sensitivity / std)^2 is d^2 = 4 / sigma^2). Wang, Balle & Kasiviswanathan 2019, Thm. 9 with
    the Pearson-Vajda terms of their Thm. 27 (see the module docstring); fractional orders by
    :func:`_rdp_at`.
    """
    a = np.asarray(orders, dtype=np.float64).reshape(-1)
    if sample_rate == 0.0:
        return np.zeros(a.size)
    if sample_rate == 1.0:  # no amplification: the Gaussian with sensitivity 2C
        return np.asarray(2.0 * a / noise_multiplier**2, dtype=np.float64)
    d2 = 4.0 / noise_multiplier**2
    return np.array([_rdp_at(float(order), sample_rate, d2) for order in a], dtype=np.float64)


def _rdp_rounds(m: DpFedAvgRounds, orders: FloatArray) -> FloatArray:
    if m.rounds == 0:
        return np.zeros(orders.size)
    sigma = m.effective_noise_multiplier
    if m.sampling == "poisson":
        assert m.sample_rate is not None  # checked at construction
        one = (
            np.zeros(orders.size)
            if m.sample_rate == 0.0
            else rdp_sampled_gaussian(
                sample_rate=m.sample_rate, noise_multiplier=sigma, orders=orders
            )
        )
    else:
        assert m.clients_per_round is not None
        one = rdp_fixed_size_gaussian(
            sample_rate=m.clients_per_round / m.users, noise_multiplier=sigma, orders=orders
        )
    return np.asarray(m.rounds * one, dtype=np.float64)


def _encode(m: DpFedAvgRounds) -> dict[str, Any]:
    return {
        "users": m.users,
        "sampling": m.sampling,
        "noise_multiplier": m.noise_multiplier,
        "clip": m.clip,
        "rounds": m.rounds,
        "sample_rate": m.sample_rate,
        "clients_per_round": m.clients_per_round,
        "quantization_step": m.quantization_step,
        "dimension": m.dimension,
    }


def _decode(d: dict[str, Any]) -> DpFedAvgRounds:
    return DpFedAvgRounds(
        users=d["users"],
        sampling=d["sampling"],
        noise_multiplier=d["noise_multiplier"],
        clip=d["clip"],
        rounds=d["rounds"],
        sample_rate=d.get("sample_rate"),
        clients_per_round=d.get("clients_per_round"),
        quantization_step=d.get("quantization_step", 0.0),
        dimension=d.get("dimension", 0),
    )


register_rdp(DpFedAvgRounds, _rdp_rounds)
register_mechanism_codec(DpFedAvgRounds, "dp_fedavg_rounds", _encode, _decode)
