"""Private hyperparameter tuning (`dpledger train --tune`), charged as one job before training.

Papernot & Steinke 2022, "Hyperparameter tuning with Renyi differential privacy": run a DP
training a random number K of times, each time with a candidate drawn uniformly from a grid of
hyperparameters, and release only the best. K follows the truncated negative binomial D_{eta,gamma}
(their Sec. 3; eta = 1 is the geometric distribution) or a Poisson distribution; the whole job is
(lambda, eps')-RDP with eps' from their Thm. 2 / Thm. 6, computed by :mod:`dp_core.rdp.tuning`.

The job is registered ONCE, through a :class:`TuningLedger`, before any candidate trains: the
ledger service (``dpledger.gate.http_tuning_ledger``, a ``tuning`` run charged as one unit) or a
local budget (:class:`LocalTuningLedger`). A refusal trains nothing.

Every candidate samples at the same rate for the same steps; the job's ``base`` is the candidate
with the smallest noise multiplier, which bounds them all (more noise is post-processing of less).
The score that selects the best candidate is the accuracy on the held-out test split, which is not
part of the training data the budget protects.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from scipy import special

from dp_core.calibration import epsilon_of_schedule
from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import SampledGaussianSchedule, Tuning
from dp_core.randomness import TUNING_STREAM, stream_generator
from dp_core.rdp.compose import compute_rdp
from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.recipe import TrainConfig

__all__ = [
    "LocalTuningLedger",
    "TuneConfig",
    "TuningLedger",
    "TuningPlan",
    "TuningRefused",
    "draw_repetitions",
    "run_tuning",
]

_PMF_TAIL = 1e-15  # the negative binomial sampler truncates the pmf where its tail is below this


class TuningRefused(Exception):
    """The ledger (or the local budget) refused the tuning job: nothing was trained."""


@dataclass(frozen=True)
class TuneConfig:
    """The tuning grid and the distribution of the number of repetitions."""

    lrs: tuple[float, ...]
    noise_multipliers: tuple[float, ...]
    distribution: str = "negative_binomial"
    eta: float = 1.0
    gamma: float = 0.2
    mu: float = 5.0

    def candidates(self) -> list[tuple[float, float]]:
        """Every (lr, noise_multiplier) pair of the grid."""
        return list(itertools.product(self.lrs, self.noise_multipliers))


@dataclass(frozen=True)
class TuningPlan:
    """What the tuning job executes: candidates of ``steps`` DP-SGD steps at ``sample_rate``."""

    sample_rate: float
    steps_per_epoch: int
    epochs: int
    schedule: str
    decay_rate: float
    max_grad_norm: float
    delta: float
    name: str
    tune: TuneConfig
    reproducible_noise: bool = False

    @property
    def base_noise_multiplier(self) -> float:
        """The smallest noise multiplier of the grid: its run bounds every candidate's."""
        return min(self.tune.noise_multipliers)

    def base(self) -> SampledGaussianSchedule:
        """Return the DP-SGD run that bounds every candidate."""
        return SampledGaussianSchedule(
            sample_rate=self.sample_rate,
            schedule=NoiseSchedule(
                kind=self.schedule,
                noise_multiplier=self.base_noise_multiplier,
                decay_rate=self.decay_rate,
            ),
            steps=self.steps_per_epoch * self.epochs,
        )

    def mechanism(self) -> Tuning:
        """Return the whole job (Papernot & Steinke 2022)."""
        t = self.tune
        return Tuning(base=self.base(), distribution=t.distribution, eta=t.eta, gamma=t.gamma,
                      mu=t.mu)  # fmt: skip

    def epsilon(self) -> tuple[float, float]:
        """(epsilon, order) of the whole job at ``delta`` (the tuning cost included)."""
        rdp = compute_rdp(self.mechanism(), DEFAULT_ORDERS)
        result = rdp_to_epsilon(orders=DEFAULT_ORDERS, rdp=rdp, delta=self.delta, warn=False)
        return result.epsilon, result.order

    def single_run_epsilon(self) -> float:
        """Epsilon of one candidate alone (what tuning without accounting would report)."""
        return epsilon_of_schedule(
            sample_rate=self.sample_rate, schedule=self.base().schedule,
            steps=self.steps_per_epoch * self.epochs, delta=self.delta, warn=False,
        ).epsilon  # fmt: skip


class TuningLedger(Protocol):
    """Where the tuning job is registered and charged, once, before any candidate trains."""

    def admit(self, plan: TuningPlan) -> dict[str, Any]:
        """Register and charge the whole job; raise :class:`TuningRefused` if it does not fit."""

    def finish(self) -> None:
        """Close the job (after the last candidate)."""


class LocalTuningLedger:
    """A local budget: the job's epsilon (tuning cost included) must be within it."""

    def __init__(self, *, budget_epsilon: float) -> None:
        """Create the ledger with the budget every job is checked against."""
        self.budget_epsilon = budget_epsilon

    def admit(self, plan: TuningPlan) -> dict[str, Any]:
        """Refuse the job when its epsilon exceeds the budget."""
        epsilon, _ = plan.epsilon()
        if epsilon > self.budget_epsilon:
            raise TuningRefused(
                f"refused: the tuning job's epsilon {epsilon:.4g} (Papernot & Steinke 2022) "
                f"exceeds the local budget {self.budget_epsilon:g}"
            )
        return {}

    def finish(self) -> None:
        """Nothing to close."""


def _negative_binomial_pmf(eta: float, gamma: float) -> np.ndarray:
    """P[K = k] for k = 1..n of the truncated negative binomial D_{eta,gamma} (their Sec. 3).

    P[K = k] = (1-gamma)^k prod_{l<k} (l+eta)/(l+1) / (gamma^-eta - 1) for eta != 0 and
    (1-gamma)^k / (k log(1/gamma)) for eta = 0, computed in log space (gammaln).
    """
    k = np.arange(1, 1 + _support_size(eta, gamma), dtype=np.float64)
    if eta == 0.0:
        log_pmf = k * math.log1p(-gamma) - np.log(k) - math.log(math.log(1.0 / gamma))
        return np.asarray(np.exp(log_pmf))
    # |prod_{l<k} (l+eta)/(l+1)| = |Gamma(k+eta)| / (|Gamma(eta)| k!); for -1 < eta < 0 the
    # product and gamma^-eta - 1 are both negative, so the ratio of absolute values is the pmf.
    log_prod = special.gammaln(k + eta) - special.gammaln(eta) - special.gammaln(k + 1.0)
    return np.asarray(np.exp(k * math.log1p(-gamma) + log_prod) / abs(gamma**-eta - 1.0))


def _support_size(eta: float, gamma: float) -> int:
    """Enough values of k that the tail beyond is below _PMF_TAIL (geometric decay 1-gamma)."""
    return int(min(10**6, 10 + (abs(eta) + 2.0) * math.log(1.0 / _PMF_TAIL) / -math.log1p(-gamma)))


def draw_repetitions(tune: TuneConfig, rng: np.random.Generator) -> int:
    """Draw the number K of candidates to train from the job's distribution."""
    if tune.distribution == "poisson":
        return int(rng.poisson(tune.mu))
    pmf = _negative_binomial_pmf(tune.eta, tune.gamma)
    cdf = np.cumsum(pmf)
    return int(np.searchsorted(cdf, rng.uniform() * cdf[-1], side="right")) + 1


def check_tunable(config: TrainConfig) -> None:
    """Refuse the options tuning does not combine with (one line, exit 2)."""
    refused = {
        "target_epsilon": config.target_epsilon,
        "adaptive_quantile": config.adaptive_quantile,
        "checkpoint_dir": config.checkpoint_dir,
        "max_records_per_individual": config.max_records_per_individual,
        "distributed": config.distributed or None,
        "user_index": config.user_index,
        "class_sample_rates": config.class_sample_rates,
    }
    for name, value in refused.items():
        if value is not None:
            raise InvalidParameterError(name, value, "is not supported with --tune")


TrainOne = Callable[[TrainConfig], dict[str, Any]]


def run_tuning(
    config: TrainConfig,
    tune: TuneConfig,
    plan: TuningPlan,
    *,
    ledger: TuningLedger | None,
    train_one: TrainOne,
) -> dict[str, Any]:
    """Register the job (refused: nothing trains), train K random candidates, keep the best.

    Returns the JSON summary: the selected candidate's, with ``tuning`` (every trained candidate,
    K, the job's epsilon with the tuning cost included) and ``epsilon`` the job's epsilon.
    """
    check_tunable(config)
    plan.mechanism()  # validates the distribution's parameters before anything is registered
    epsilon, order = plan.epsilon()
    ledger_info = {} if ledger is None else ledger.admit(plan)  # TuningRefused: nothing trained
    # K and the candidates drawn are part of the mechanism (Papernot & Steinke 2022): secret.
    rng = stream_generator(config.seed if config.reproducible_noise else None, stream=TUNING_STREAM)
    repetitions = draw_repetitions(tune, rng)
    grid = tune.candidates()
    trained = []
    try:
        for index in range(repetitions):
            lr, sigma = grid[int(rng.integers(len(grid)))]
            candidate = replace(
                config, lr=lr, noise_multiplier=sigma, service=None, token=None, dataset=None,
                budget_epsilon=None, seed=config.seed + 1 + index,
                run_name=f"{plan.name}-candidate-{index}",
            )  # fmt: skip
            trained.append({"lr": lr, "noise_multiplier": sigma, **train_one(candidate)})
    finally:
        if ledger is not None:
            ledger.finish()
    return _summary(plan, trained, repetitions, epsilon, order, ledger_info)


def _summary(
    plan: TuningPlan,
    trained: list[dict[str, Any]],
    repetitions: int,
    epsilon: float,
    order: float,
    ledger_info: dict[str, Any],
) -> dict[str, Any]:
    scored = [c for c in trained if c.get("test_accuracy") is not None]
    best = max(scored, key=lambda c: float(c["test_accuracy"]), default=None)
    single_run = ("statement", "epsilon_rdp", "epsilon_pld", "epsilon_per_record")
    selected = {} if best is None else {k: v for k, v in best.items() if k not in single_run}
    tuning = {
        "candidates": [[lr, s] for lr, s in plan.tune.candidates()],
        "distribution": plan.tune.distribution,
        "eta": plan.tune.eta,
        "gamma": plan.tune.gamma,
        "mu": plan.tune.mu,
        "expected_repetitions": plan.mechanism().expected_runs,
        "repetitions": repetitions,
        "trained": [
            {k: c.get(k) for k in ("lr", "noise_multiplier", "test_accuracy", "epsilon")}
            for c in trained
        ],
        "epsilon": epsilon,
        "order": order,
        "epsilon_single_run": plan.single_run_epsilon(),
        "delta": plan.delta,
        **ledger_info,
    }
    return {
        **selected,
        "run_name": plan.name,
        "stop_reason": "completed" if best is not None else "no candidate trained",
        "selected": None if best is None else {"lr": best["lr"],
                                               "noise_multiplier": best["noise_multiplier"]},
        "epsilon": epsilon,  # the whole job's, tuning cost included
        "epsilon_rdp": epsilon,
        "epsilon_pld": None,  # Papernot & Steinke's bound is an RDP bound: no PLD counterpart
        "delta": plan.delta,
        "tuning": tuning,
    }  # fmt: skip


def tuning_plan(
    config: TrainConfig, tune: TuneConfig, *, num_examples: int, name: str
) -> TuningPlan:
    """Return the job ``config`` and ``tune`` describe on ``num_examples`` training examples."""
    from dp_core.trainer.sampling import steps_per_epoch

    if not tune.lrs or not tune.noise_multipliers:
        raise InvalidParameterError("tune", tune, "needs at least one lr and one noise multiplier")
    for sigma in tune.noise_multipliers:
        if not sigma > 0:
            raise InvalidParameterError("tune_noise", sigma, "noise multipliers must be > 0")
    q = config.batch_size / num_examples
    return TuningPlan(
        sample_rate=q, steps_per_epoch=steps_per_epoch(q), epochs=config.epochs,
        schedule=config.schedule, decay_rate=config.decay_rate,
        max_grad_norm=config.max_grad_norm, delta=config.delta, name=name, tune=tune,
        reproducible_noise=config.reproducible_noise,
    )  # fmt: skip
