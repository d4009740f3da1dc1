"""The one-run privacy audit of a DP-SGD run (Steinke, Nasr & Jagielski 2023), with the trainer.

The audit inserts m *input-space canaries* (uniform random images with uniform random labels:
out of distribution and unlearnable from the rest of the data, so a canary is fitted only if it
was trained on), each included in the training set independently with probability 1/2 (seeded).
It trains once with :class:`~dp_core.trainer.loop.DPTrainer` exactly as a normal run would, scores
each canary by minus its loss, guesses membership for the most and least confident, and turns
the count of correct guesses into an epsilon lower bound with :mod:`dp_core.audit`. The run's
theoretical epsilon is its RDP epsilon at the same delta.

Input-space canaries audit the *released model* only (black-box); they give loose lower bounds
for correctly implemented DP-SGD (the paper's Figure 3), which is the point: a bound far below
the theoretical epsilon is expected, a bound above it is a bug. The non-private mode (no
clipping, no noise) shows the audit finds leakage when there is some.

A loss-threshold membership-inference report (AUC, TPR at low FPR) of the trained model on its
real training data against the held-out test split is computed alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import dp_core
from dp_core.audit import (
    AuditBound,
    MembershipReport,
    best_audit_over_guess_counts,
    loss_threshold_attack,
)
from dp_core.errors import InvalidParameterError
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.data import TrainTestData, load_data
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.models import build_model
from dp_core.trainer.recipe import build_optimizer
from dp_core.trainer.sampling import poisson_batch, steps_per_epoch

__all__ = [
    "AuditConfig",
    "AuditResult",
    "CanarySet",
    "make_canaries",
    "run_audit",
]


@dataclass(frozen=True)
class AuditConfig:
    """What ``dpledger audit`` accepts.

    Attributes:
        private: False trains without clipping or noise (the audit's positive control); then
            ``noise_multiplier`` and ``target_epsilon`` must be None.
    """

    data: str = "digits"
    model: str = "mlp"
    canaries: int = 256
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1.0
    optimizer: str = "sgd"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    confidence: float = 0.95
    seed: int = 0
    private: bool = True


@dataclass(frozen=True)
class CanarySet:
    """m canaries and which of them are in the training set."""

    inputs: Tensor
    labels: Tensor
    included: Tensor  # bool, shape [m]


@dataclass(frozen=True)
class AuditResult:
    """The audit of one run.

    Attributes:
        epsilon_theoretical: The run's RDP epsilon at ``delta`` (None for a non-private run).
        epsilon_lower_bound: The one-run empirical lower bound at ``confidence``.
        confidence: 1 - beta of the lower bound.
        canaries: m.
        canaries_included: How many canaries were trained on (about m / 2).
        bound: The full bound (guesses, correct guesses, p-value).
        membership: The loss-threshold attack on training data vs held-out data.
        test_accuracy: Accuracy of the audited model on the held-out split.
        noise_multiplier: sigma of the run (None for a non-private run).
        delta: The delta of both epsilons.
    """

    epsilon_theoretical: float | None
    epsilon_lower_bound: float
    confidence: float
    canaries: int
    canaries_included: int
    bound: AuditBound
    membership: MembershipReport
    test_accuracy: float
    noise_multiplier: float | None
    delta: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON summary (the CLI's ``--json`` output)."""
        return {
            "epsilon_theoretical": self.epsilon_theoretical,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "canaries": self.canaries,
            "canaries_included": self.canaries_included,
            "guesses": self.bound.guesses,
            "correct_guesses": self.bound.correct,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "test_accuracy": self.test_accuracy,
            "membership_inference": {
                "attack": "loss_threshold",
                "auc": self.membership.auc,
                "tpr_at_fpr": {f"{k:g}": v for k, v in self.membership.tpr_at_fpr.items()},
                "members": self.membership.members,
                "non_members": self.membership.non_members,
            },
        }


def make_canaries(*, count: int, shape: tuple[int, ...], num_classes: int, seed: int) -> CanarySet:
    """Return ``count`` uniform random images with uniform random labels, each in w.p. 1/2."""
    if count < 2:
        raise InvalidParameterError("canaries", count, "must be >= 2")
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.rand((count, *shape), generator=g) < 0.5).float()  # binary: far apart
    labels = torch.randint(num_classes, (count,), generator=g)
    included = torch.rand(count, generator=g) < 0.5
    return CanarySet(inputs, labels, included)


def _with_canaries(train: TensorDataset, canaries: CanarySet) -> TensorDataset:
    x, y = train.tensors
    keep = canaries.included
    return TensorDataset(
        torch.cat([x, canaries.inputs[keep].to(x.dtype)]), torch.cat([y, canaries.labels[keep]])
    )


@torch.no_grad()
def _losses(model: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
    model.eval()
    return F.cross_entropy(model(x), y, reduction="none").double().numpy()


def _guess_counts(m: int) -> tuple[int, ...]:
    """k+ = k- = k over a small grid (Bonferroni-corrected in :mod:`dp_core.audit`)."""
    return tuple(sorted({max(1, m // d) for d in (32, 16, 8, 4, 2)}))


def _noise_multiplier(config: AuditConfig, sample_rate: float) -> float:
    if (config.noise_multiplier is None) == (config.target_epsilon is None):
        raise InvalidParameterError(
            "noise_multiplier",
            config.noise_multiplier,
            "give exactly one of --noise-multiplier or --target-epsilon (or --non-private)",
        )
    if config.noise_multiplier is not None:
        return config.noise_multiplier
    assert config.target_epsilon is not None
    return dp_core.calibrate_noise_multiplier(
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        sample_rate=sample_rate,
        steps=config.epochs * steps_per_epoch(sample_rate),
    ).noise_multiplier


def _train_private(
    config: AuditConfig, model: nn.Module, train: TensorDataset
) -> tuple[float, float]:
    """DP-SGD exactly as ``dpledger train`` runs it; return (epsilon, sigma)."""
    q = min(config.batch_size / len(train), 1.0)
    sigma = _noise_multiplier(config, q)
    trainer = DPTrainer(
        model,
        build_optimizer(config.optimizer, model.parameters(), config.lr),
        train,
        loss_fn=F.cross_entropy,
        max_grad_norm=config.max_grad_norm,
        epochs=config.epochs,
        sample_rate=q,
        schedule=NoiseSchedule("constant", sigma),
        delta=config.delta,
        seed=config.seed,
        name="dpledger-audit",
    )
    return trainer.fit().epsilon, sigma


def _train_non_private(config: AuditConfig, model: nn.Module, train: TensorDataset) -> None:
    """Poisson-sampled SGD on the mean loss: no clipping, no noise (the positive control)."""
    if config.noise_multiplier is not None or config.target_epsilon is not None:
        raise InvalidParameterError(
            "non_private", True, "takes neither --noise-multiplier nor --target-epsilon"
        )
    x, y = train.tensors
    q = min(config.batch_size / len(train), 1.0)
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
    g = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs * steps_per_epoch(q)):
        idx = poisson_batch(len(train), q, g)
        if idx.numel() == 0:
            continue
        loss = F.cross_entropy(model(x[idx]), y[idx], reduction="sum") / (q * len(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()


def run_audit(config: AuditConfig, *, data: TrainTestData | None = None) -> AuditResult:
    """Train once with m canaries and return the audit (see the module docstring)."""
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config.data, seed=config.seed)
    x_train, y_train = data.train.tensors
    canaries = make_canaries(
        count=config.canaries,
        shape=tuple(x_train.shape[1:]),
        num_classes=data.num_classes,
        seed=config.seed + 7919,  # independent of the trainer's generators
    )
    train = _with_canaries(data.train, canaries)
    model = build_model(
        config.model,
        image_size=data.image_size,
        num_classes=data.num_classes,
        channels=data.channels,
    )
    if config.private:
        epsilon, sigma = _train_private(config, model, train)
    else:
        _train_non_private(config, model, train)
        epsilon, sigma = None, None
    scores = -_losses(model, canaries.inputs, canaries.labels)
    bound = best_audit_over_guess_counts(
        scores,
        canaries.included.numpy(),
        guess_counts=_guess_counts(config.canaries),
        confidence=config.confidence,
        delta=config.delta,
    )
    x_test, y_test = data.test.tensors
    test_losses = _losses(model, x_test, y_test)
    membership = loss_threshold_attack(_losses(model, x_train, y_train), test_losses)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).double().mean())
    return AuditResult(
        epsilon_theoretical=epsilon,
        epsilon_lower_bound=bound.epsilon,
        confidence=bound.confidence,
        canaries=config.canaries,
        canaries_included=int(canaries.included.sum()),
        bound=bound,
        membership=membership,
        test_accuracy=accuracy,
        noise_multiplier=sigma,
        delta=config.delta,
    )
