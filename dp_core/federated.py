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
  is (alpha, 2 alpha / sigma^2)-RDP, and Wang, Balle & Kasiviswanathan 2019 ("Subsampled Renyi
  Differential Privacy and Analytical Moments Accountant", AISTATS, Thm. 9) bound the subsampled
  mechanism at integer alpha >= 2 with gamma = m/N:
  eps(alpha) <= log(1 + gamma^2 C(alpha,2) min{4(e^{eps(2)} - 1), 2 e^{eps(2)}}
  + sum_{j=3}^{alpha} 2 gamma^j C(alpha,j) e^{(j-1) eps(j)}) / (alpha - 1)
  (the Gaussian has eps(inf) = inf, which leaves 2 in both minima over (e^{eps(inf)} - 1)^j).
  RDP is non-decreasing in the order (Mironov 2017, Prop. 9), so a fractional order alpha is
  charged the bound at ceil(alpha) (rounding toward privacy); order ceil(alpha) < 2 uses 2.
  The guarantee is under replace-one adjacency, the natural one when N is public.
* Quantization (``quantization_step`` s > 0, model ``dimension`` d): secure aggregation sums
  integers, so each clipped update is rounded coordinate-wise to a grid of step s. Stochastic
  rounding moves a coordinate by less than s (nearest rounding by at most s/2), so a rounded
  update has norm at most C' = C + sqrt(d) s. The accounting uses the sensitivity C' with the
  noise std sigma C actually added, i.e. the noise multiplier sigma C / C'. Modular arithmetic
  (SecAgg+) adds nothing as long as the sum does not wrap around, which the workflow must ensure
  (modulus > clients x quantized range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def _wbk_integer_order(*, order: int, gamma: float, noise_multiplier: float) -> float:
    """WBK 2019 Thm. 9 at integer ``order`` >= 2, base Gaussian with replace-one eps(j) = 2j/s^2.

    Summed in log space: the j-th term grows like exp(j^2 / s^2) and overflows a float otherwise.
    """
    s2 = noise_multiplier**2
    eps2 = 4.0 / s2  # eps(2) = 2 * 2 / sigma^2
    log_gamma = math.log(gamma)
    # j = 2: gamma^2 C(alpha,2) min{4 (e^eps2 - 1), 2 e^eps2}
    # log(e^x - 1) = x + log(1 - e^-x): finite for every x > 0 (expm1 overflows past x ~ 709).
    log_second = min(math.log(4.0) + eps2 + math.log(-math.expm1(-eps2)), math.log(2.0) + eps2)
    logs = [2.0 * log_gamma + float(_log_binomial(order, np.array([2.0]))[0]) + log_second]
    if order >= 3:
        j = np.arange(3, order + 1, dtype=np.float64)
        # 2 gamma^j C(alpha,j) exp((j-1) eps(j)), eps(j) = 2 j / sigma^2
        logs.extend(
            math.log(2.0) + j * log_gamma + _log_binomial(order, j) + (j - 1.0) * 2.0 * j / s2
        )
    log_sum = float(special.logsumexp(logs))
    return float(np.logaddexp(0.0, log_sum)) / (order - 1)  # log(1 + sum), stable for large sums


def rdp_fixed_size_gaussian(
    *, sample_rate: float, noise_multiplier: float, orders: FloatArray
) -> FloatArray:
    """RDP of the Gaussian sum (std sigma C) on m of N users drawn without replacement.

    ``sample_rate`` is gamma = m/N; replace-one adjacency (sensitivity 2C), WBK 2019 Thm. 9.
    A fractional order is charged the bound at ceil(order) (RDP is monotone in the order).
    """
    a = np.asarray(orders, dtype=np.float64).reshape(-1)
    if sample_rate == 0.0:
        return np.zeros(a.size)
    if sample_rate == 1.0:  # no amplification: the Gaussian with sensitivity 2C
        return np.asarray(2.0 * a / noise_multiplier**2, dtype=np.float64)
    cache: dict[int, float] = {}
    out = np.empty(a.size)
    for i, order in enumerate(a):
        k = max(2, math.ceil(order))
        if k not in cache:
            cache[k] = _wbk_integer_order(
                order=k, gamma=sample_rate, noise_multiplier=noise_multiplier
            )
        out[i] = cache[k]
    return out


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
