"""The one-run privacy audit of a DP-SGD run (Steinke, Nasr & Jagielski 2023), with the trainer.

m canaries are each included in the training set independently with probability 1/2 (seeded);
the run trains once with :class:`~dp_core.trainer.loop.DPTrainer`, exactly as a normal run
would; each canary gets a score, the auditor guesses membership for the most and least confident,
and :mod:`dp_core.audit` turns the count of correct guesses into an epsilon lower bound. The
run's theoretical epsilon is its RDP epsilon at the same delta. Two kinds of canaries:

* ``gradient`` (default; the paper's white-box "Dirac" gradient canaries, observed at the last
  iterate): the model gets one extra scalar parameter per canary, and canary j's loss is
  ``scale * theta_j`` with a scale far above C, so its per-example gradient is C e_j after
  clipping and touches nothing else. Every step adds the mechanism's noise to theta as to any
  parameter; the score is ``-theta_j`` at the end. This audits the DP-SGD mechanism itself
  (sampling, clipping, noise, accounting): a bug there shows as a bound above theory.
* ``input`` (black-box): uniform random binary images with random labels, scored by minus
  their loss on the released model. Much looser for correct DP-SGD (the paper's Figure 3).

The non-private mode (no clipping, no noise) is the positive control: the audit must find
leakage. With a ``gate`` (``dpledger audit --service``) the audit's training run is an ordinary
DP-SGD run of the ledger: registered (plan reserved) when it opens, charged before every epoch;
a refusal stops the audit with :class:`~dp_core.trainer.exit_codes.CommandError` (exit 3). A loss-threshold membership-inference report (AUC, TPR at low FPR) of the trained
model on its real training data against the held-out split comes alongside.
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
from dp_core.trainer.budget_gate import BudgetGate
from dp_core.trainer.data import TrainTestData, load_data
from dp_core.trainer.exit_codes import CommandError, ExitCode
from dp_core.trainer.loop import DPTrainer
from dp_core.trainer.models import build_model
from dp_core.trainer.recipe import build_optimizer
from dp_core.trainer.sampling import poisson_batch, steps_per_epoch

CANARY_KINDS = ("gradient", "input")
GRADIENT_CANARY_SCALE = 1e4
"""Canary loss scale in units of C: the gradient is clipped to exactly C (up to 1e-4 relative)."""

__all__ = [
    "CANARY_KINDS",
    "AuditConfig",
    "AuditResult",
    "CanarySet",
    "GradientCanaryModel",
    "gradient_canary_loss",
    "make_canaries",
    "run_audit",
]


@dataclass(frozen=True)
class AuditConfig:
    """What ``dpledger audit`` accepts.

    Attributes:
        private: False trains without clipping or noise (the audit's positive control); then
            ``noise_multiplier`` and ``target_epsilon`` must be None.
        canary_kind: ``gradient`` (white-box, last iterate) or ``input`` (black-box).
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
    reproducible_noise: bool = False
    private: bool = True
    canary_kind: str = "gradient"


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
        canary_kind: ``gradient`` or ``input``.
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
    canary_kind: str = "gradient"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON summary (the CLI's ``--json`` output)."""
        return {
            "epsilon_theoretical": self.epsilon_theoretical,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "canaries": self.canaries,
            "canaries_included": self.canaries_included,
            "canary_kind": self.canary_kind,
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


class GradientCanaryModel(nn.Module):
    """``base`` plus one scalar parameter per gradient canary, appended to the outputs.

    Outputs are ``[base logits (K), theta (m)]``; labels ``K + j`` mark canary j (see
    :func:`gradient_canary_loss`).
    """

    def __init__(self, base: nn.Module, canaries: int) -> None:
        """Wrap ``base`` and add ``canaries`` zero-initialised scalars."""
        super().__init__()
        self.base = base
        self.canary = nn.Parameter(torch.zeros(canaries))

    def forward(self, x: Tensor) -> Tensor:
        """Return the base logits with the canary parameters appended to each row."""
        logits = self.base(x)
        return torch.cat([logits, self.canary.expand(logits.shape[0], -1)], dim=1)


def gradient_canary_loss(num_classes: int, scale: float) -> Any:
    """Cross-entropy for labels < K; ``scale * theta_j`` for label K + j (branch-free for vmap).

    ``torch.where`` sends no gradient into the branch it does not select, so a canary's gradient
    is ``scale * e_j`` on the canary parameters alone and an ordinary example's never reaches them.
    """

    def loss(output: Tensor, target: Tensor) -> Tensor:
        is_canary = target >= num_classes
        ce = F.cross_entropy(
            output[:, :num_classes], torch.where(is_canary, 0, target), reduction="none"
        )
        j = torch.where(is_canary, target - num_classes, 0)
        theta = output[:, num_classes:].gather(1, j.unsqueeze(1)).squeeze(1)
        return torch.where(is_canary, scale * theta, ce).mean()

    return loss


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
    config: AuditConfig,
    model: nn.Module,
    train: TensorDataset,
    loss_fn: Any,
    trainer_class: type[DPTrainer],
    gate: BudgetGate | None = None,
) -> tuple[float, float]:
    """DP-SGD exactly as ``dpledger train`` runs it; return (epsilon, sigma).

    Raises:
        CommandError: (exit 3) when ``gate`` refused the run or one of its epochs.
    """
    q = min(config.batch_size / len(train), 1.0)
    sigma = _noise_multiplier(config, q)
    trainer = trainer_class(
        model,
        build_optimizer(config.optimizer, model.parameters(), config.lr),
        train,
        loss_fn=loss_fn,
        max_grad_norm=config.max_grad_norm,
        epochs=config.epochs,
        sample_rate=q,
        schedule=NoiseSchedule(kind="constant", noise_multiplier=sigma),
        delta=config.delta,
        noise_seed=config.seed if config.reproducible_noise else None,
        name="dpledger-audit",
        gate=gate,
    )
    result = trainer.fit()
    if result.stop_reason.startswith("refused"):
        raise CommandError(
            f"{result.stop_reason} (the audit trained {result.epochs_completed} of "
            f"{trainer.plan.epochs} planned epochs; no audit was stored)",
            exit_code=ExitCode.REFUSED,
        )
    return result.epsilon, sigma


def _train_non_private(
    config: AuditConfig, model: nn.Module, train: TensorDataset, loss_fn: Any
) -> None:
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
        loss = loss_fn(model(x[idx]), y[idx]) * idx.numel() / (q * len(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _gradient_canaries(count: int, train: TensorDataset, num_classes: int, seed: int) -> CanarySet:
    """Gradient canaries: zero inputs labelled K + j (the label selects the canary)."""
    g = torch.Generator().manual_seed(seed)
    x = train.tensors[0]
    inputs = torch.zeros((count, *x.shape[1:]), dtype=x.dtype)
    labels = num_classes + torch.arange(count)
    return CanarySet(inputs, labels, torch.rand(count, generator=g) < 0.5)


def run_audit(
    config: AuditConfig,
    *,
    data: TrainTestData | None = None,
    trainer_class: type[DPTrainer] = DPTrainer,
    gate: BudgetGate | None = None,
) -> AuditResult:
    """Train once with m canaries and return the audit (see the module docstring).

    ``trainer_class`` is a test seam: a deliberately broken trainer must be caught. ``gate``
    charges the private training run to a ledger (a non-private control cannot be charged).
    """
    if gate is not None and not config.private:
        raise InvalidParameterError(
            "non_private", True, "a run without noise has no finite epsilon to charge to a ledger"
        )
    if config.canary_kind not in CANARY_KINDS:
        raise InvalidParameterError(
            "canary_kind", config.canary_kind, f"must be one of {', '.join(CANARY_KINDS)}"
        )
    if config.canaries < 2:
        raise InvalidParameterError("canaries", config.canaries, "must be >= 2")
    torch.manual_seed(config.seed)
    data = data if data is not None else load_data(config.data, seed=config.seed)
    x_train, y_train = data.train.tensors
    k = data.num_classes
    seed = config.seed + 7919  # canaries independent of the trainer's generators
    base = build_model(
        config.model, image_size=data.image_size, num_classes=k, channels=data.channels
    )
    model: nn.Module
    if config.canary_kind == "gradient":
        canaries = _gradient_canaries(config.canaries, data.train, k, seed)
        model = GradientCanaryModel(base, config.canaries)
        loss_fn = gradient_canary_loss(k, GRADIENT_CANARY_SCALE * config.max_grad_norm)
    else:
        canaries = make_canaries(
            count=config.canaries, shape=tuple(x_train.shape[1:]), num_classes=k, seed=seed
        )
        model, loss_fn = base, F.cross_entropy
    train = _with_canaries(data.train, canaries)
    if config.private:
        epsilon, sigma = _train_private(config, model, train, loss_fn, trainer_class, gate)
    else:
        _train_non_private(config, model, train, loss_fn)
        epsilon, sigma = None, None
    if config.canary_kind == "gradient":
        scores = -model.get_parameter("canary").detach().double().numpy()
    else:
        scores = -_losses(base, canaries.inputs, canaries.labels)
    bound = best_audit_over_guess_counts(
        scores,
        canaries.included.numpy(),
        guess_counts=_guess_counts(config.canaries),
        confidence=config.confidence,
        delta=config.delta,
    )
    return _result(config, base, data, canaries, bound, epsilon, sigma)


def _result(
    config: AuditConfig,
    base: nn.Module,
    data: TrainTestData,
    canaries: CanarySet,
    bound: AuditBound,
    epsilon: float | None,
    sigma: float | None,
) -> AuditResult:
    x_train, y_train = data.train.tensors
    x_test, y_test = data.test.tensors
    membership = loss_threshold_attack(
        _losses(base, x_train, y_train), _losses(base, x_test, y_test)
    )
    with torch.no_grad():
        accuracy = float((base(x_test).argmax(1) == y_test).double().mean())
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
        canary_kind=config.canary_kind,
    )
