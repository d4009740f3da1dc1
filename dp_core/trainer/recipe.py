"""The ``dpledger train`` recipe: data, model, optimizer, gate and trainer from plain settings.

The CLI (:mod:`dp_core.trainer.cli`) parses options into a :class:`TrainConfig` without importing
torch, then calls :func:`run_training`. The recipe is a thin layer over the Python API.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import dp_core
from dp_core.errors import InvalidParameterError
from dp_core.randomness import warn_reproducible_noise
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.adaptive_clipping import AdaptiveClipping
from dp_core.trainer.budget_gate import (
    BudgetGate,
    GateDecision,
    LocalBudgetGate,
    RemoteGateFactory,
    RunPlan,
)
from dp_core.trainer.checkpoint import load_checkpoint
from dp_core.trainer.class_sampling import (
    BALANCED_NOTE,
    ClassSampling,
    epsilon_per_class,
    parse_class_sample_rates,
)
from dp_core.trainer.data import load_data
from dp_core.trainer.features import features_for_model
from dp_core.trainer.guards import (
    calibrate_group_noise_multiplier,
    class_weighted_loss,
    group_epsilon,
    parse_class_weights,
)
from dp_core.trainer.loop import DPTrainer, EpochStart, EpochStats, StepStats
from dp_core.trainer.models import build_model
from dp_core.trainer.run_statement import run_statement
from dp_core.trainer.sampling import steps_per_epoch

__all__ = [
    "OPTIMIZERS",
    "TrainConfig",
    "build_optimizer",
    "evaluate",
    "launched_distributed",
    "run_training",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``dpledger train`` accepts (see the CLI's help for each field)."""

    data: str = "digits"
    model: str = "mlp"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1.0
    optimizer: str = "sgd"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    schedule: str = "constant"
    decay_rate: float = 0.0
    delta: float = 1e-5
    checkpoint_dir: str | None = None
    service: str | None = None
    token: str | None = None
    dataset: str | None = None
    reserve: str = "plan"
    budget_epsilon: float | None = None
    max_physical_batch_size: int | None = None
    microbatches: int | None = None
    adaptive_quantile: float | None = None
    engine: str = "auto"
    seed: int = 0
    reproducible_noise: bool = False
    threads: int | None = None
    distributed: bool | None = None
    max_records_per_individual: int | None = None
    class_weights: str | None = None
    run_name: str | None = None
    user_index: str | None = None
    class_sample_rates: str | None = None


def build_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Return the named optimizer (``momentum`` is SGD with momentum 0.9)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise InvalidParameterError("optimizer", name, f"must be one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 1024) -> tuple[float, float]:
    """Return (mean cross-entropy, accuracy) of ``model`` on ``data`` (evaluation mode)."""
    model.eval()
    x, y = data.tensors
    loss = correct = 0.0
    for start in range(0, len(y), batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += float(F.cross_entropy(out, target, reduction="sum"))
        correct += float((out.argmax(1) == target).sum())
    return loss / max(len(y), 1), correct / max(len(y), 1)


def _schedule(
    config: TrainConfig, sample_rate: float, sampling: ClassSampling | None = None
) -> NoiseSchedule:
    """The noise schedule: --noise-multiplier, or calibrated to --target-epsilon at rate q.

    With per-class rates, q is q_max and an epoch is ``sampling.steps_per_epoch`` steps.
    """
    if (config.noise_multiplier is None) == (config.target_epsilon is None):
        raise InvalidParameterError(
            "noise_multiplier",
            config.noise_multiplier,
            "give exactly one of --noise-multiplier or --target-epsilon",
        )
    sigma = config.noise_multiplier
    if sigma is None and (config.max_records_per_individual or 1) > 1:
        assert config.target_epsilon is not None  # calibrate the group epsilon of K records
        sigma = calibrate_group_noise_multiplier(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            steps=config.epochs * _steps_per_epoch(sample_rate, sampling),
            group_size=config.max_records_per_individual or 1,
            schedule=config.schedule,
            decay_rate=config.decay_rate,
        )
    if sigma is None:
        assert config.target_epsilon is not None
        sigma = dp_core.calibrate_noise_multiplier(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            steps=config.epochs * _steps_per_epoch(sample_rate, sampling),
            schedule=config.schedule,
            decay_rate=config.decay_rate,
        ).noise_multiplier
    return NoiseSchedule(kind=config.schedule, noise_multiplier=sigma, decay_rate=config.decay_rate)


def _steps_per_epoch(sample_rate: float, sampling: ClassSampling | None) -> int:
    return steps_per_epoch(sample_rate) if sampling is None else sampling.steps_per_epoch


class _NoRemoteGate:
    """Stands in for the service's gate when nobody gave a builder (dp_core's CLI alone).

    It refuses to open, so the run's own checks (data guards, plan) still speak first.
    """

    def __init__(self, service: str) -> None:
        self.service = service

    def open(self, plan: RunPlan) -> GateDecision:
        raise InvalidParameterError(
            "service", self.service, "needs a ledger gate: run it as `dpledger train`"
        )

    def before_epoch(self, epoch: int) -> GateDecision:
        raise RuntimeError("the gate is not open")

    def finish(self) -> None:
        """Nothing was registered."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def _gate(config: TrainConfig, remote_gate: RemoteGateFactory | None) -> BudgetGate | None:
    if config.service is not None:
        if not config.token or not config.dataset:
            raise InvalidParameterError(
                "service", config.service, "needs --token and --dataset too"
            )
        if config.budget_epsilon is not None:
            raise InvalidParameterError(
                "budget_epsilon",
                config.budget_epsilon,
                "is for local runs; the service holds the budget",
            )
        if config.reserve not in ("plan", "epoch"):
            raise InvalidParameterError("reservation", config.reserve, "one of 'plan' or 'epoch'")
        if remote_gate is None:
            return _NoRemoteGate(config.service)
        return remote_gate(
            base_url=config.service,
            token=config.token,
            dataset=config.dataset,
            reservation=config.reserve,
        )
    budget = config.budget_epsilon if config.budget_epsilon is not None else config.target_epsilon
    return None if budget is None else LocalBudgetGate(target_epsilon=budget, delta=config.delta)


def _loss(config: TrainConfig, labels: torch.Tensor, num_classes: int) -> Any:
    """Cross-entropy, class-weighted per example with ``--class-weights`` (see guards)."""
    if config.class_weights is None:
        return F.cross_entropy
    return class_weighted_loss(parse_class_weights(config.class_weights, labels, num_classes))


def _check_group_budget(config: TrainConfig, trainer: DPTrainer) -> None:
    """Refuse a grouped run whose planned group epsilon exceeds the local budget."""
    budget = config.budget_epsilon if config.budget_epsilon is not None else config.target_epsilon
    if budget is None:
        return
    planned = group_epsilon(
        trainer.plan.mechanism(0, trainer.plan.epochs),
        delta=config.delta,
        group_size=trainer.group_size,
    )
    if planned > budget:
        raise InvalidParameterError(
            "max_records_per_individual",
            trainer.group_size,
            f"group privacy for K={trainer.group_size} makes the plan's epsilon {planned:.3f} > "
            f"budget {budget:g}; raise --noise-multiplier or train fewer epochs",
        )


def _class_sampling(
    config: TrainConfig, labels: torch.Tensor, num_classes: int
) -> ClassSampling | None:
    """``--class-sample-rates`` parsed against the training labels (None without it)."""
    if config.class_sample_rates is None:
        return None
    if config.user_index is not None:  # (distributed is refused before joining a group)
        raise InvalidParameterError(
            "user_index", config.user_index, "is not supported with --class-sample-rates"
        )
    return parse_class_sample_rates(
        config.class_sample_rates, labels=labels, num_classes=num_classes,
        batch_size=config.batch_size,
    )  # fmt: skip


def _class_summary(
    trainer: DPTrainer, sampling: ClassSampling | None, epochs: int
) -> dict[str, Any]:
    """The summary's per-class fields (null without per-class rates)."""
    if sampling is None:
        return {"class_sample_rates": None, "epsilon_per_class": None}
    return {
        "class_sample_rates": {
            **sampling.to_dict(),
            "note": BALANCED_NOTE if sampling.from_class_counts else None,
        },
        "epsilon_per_class": list(epsilon_per_class(trainer.plan, epochs)),
    }


def _user_ids(config: TrainConfig, records: int) -> torch.Tensor | None:
    """The user id of each training record (``--user-index``: .npy or one integer per line).

    With ``--service`` the run is registered as user-level DP-SGD, which the ledger admits only
    on a dataset whose privacy unit is the user (a dataset of examples refuses it: one record
    removed from a user changes that user's clipped sum by up to 2C).
    """
    if config.user_index is None:
        return None
    path = config.user_index
    ids = np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    if ids.ndim != 1 or ids.shape[0] != records or not np.issubdtype(ids.dtype, np.integer):
        raise InvalidParameterError(
            "user_index", path, f"needs one integer user id per training record ({records})"
        )
    return torch.from_numpy(ids.astype(np.int64))


def run_name(config: TrainConfig) -> str:
    """The run's name in the ledger: as given; else a resumed checkpoint's; else a fresh one.

    A fresh name says what trained on which data, and when: ``dpledger-train-digits-20261129-
    101500`` (UTC). A resumed run keeps the name it was registered with.
    """
    if config.run_name is not None:
        return config.run_name
    if config.checkpoint_dir is not None:
        checkpoint = Path(config.checkpoint_dir) / "checkpoint.pt"
        if checkpoint.exists():
            return str(load_checkpoint(checkpoint)["plan"]["name"])
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"dpledger-train-{config.data.split(':')[0]}-{stamp}"


def _same_on_every_rank(value: str) -> str:
    """Return rank 0's ``value`` on every rank (a fresh name's time stamp may differ)."""
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return str(shared[0])


def launched_distributed(config: TrainConfig) -> bool:
    """Return whether to train data-parallel: as configured, else when ``WORLD_SIZE`` > 1."""
    if config.distributed is not None:
        return config.distributed
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _join_group() -> bool:
    """Initialize the gloo process group from torchrun's environment; return whether it did."""
    if dist.is_initialized():
        return False
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise InvalidParameterError(
            "distributed", True, f"needs {', '.join(missing)} set: launch with torchrun"
        )
    dist.init_process_group("gloo")
    return True


def run_training(
    config: TrainConfig,
    *,
    on_step: Callable[[StepStats], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_epoch_start: Callable[[EpochStart], None] | None = None,
    gate: BudgetGate | None = None,
    remote_gate: RemoteGateFactory | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says and return the JSON summary (``gate`` overrides the config's).

    ``remote_gate`` builds the ledger service's gate for ``config.service`` (``dpledger`` passes
    ``dpledger.gate.http_gate``; dp_core cannot import it).

    When distributed, every rank calls this with the same config (torchrun sets the environment);
    the process group is initialized here unless it already is, and every rank returns the same
    summary.
    """
    distributed = launched_distributed(config)
    if distributed and config.class_sample_rates is not None:  # before joining any group
        raise InvalidParameterError(
            "distributed", True, "is not supported with --class-sample-rates"
        )
    owns_group = distributed and _join_group()
    try:
        return _train(
            config,
            on_step=on_step,
            on_epoch=on_epoch,
            on_epoch_start=on_epoch_start,
            gate=gate,
            remote_gate=remote_gate,
            distributed=distributed,
        )
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    *,
    on_step: Callable[[StepStats], None] | None,
    on_epoch: Callable[[EpochStats], None] | None,
    on_epoch_start: Callable[[EpochStart], None] | None,
    gate: BudgetGate | None,
    remote_gate: RemoteGateFactory | None,
    distributed: bool,
) -> dict[str, Any]:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.reproducible_noise and (not distributed or dist.get_rank() == 0):
        warn_reproducible_noise(config.seed)
    torch.manual_seed(config.seed)  # public randomness only: model init (the split: load_data)
    data = features_for_model(config.model, load_data(config.data, seed=config.seed))
    model = build_model(
        config.model,
        image_size=data.image_size,
        num_classes=data.num_classes,
        channels=data.channels,
    )
    optimizer = build_optimizer(config.optimizer, model.parameters(), config.lr)
    users = _user_ids(config, len(data.train))
    population = len(data.train) if users is None else int(torch.unique(users).numel())
    sampling = _class_sampling(config, data.train.tensors[1], data.num_classes)
    q = config.batch_size / population if sampling is None else sampling.max_rate
    # With --service the gate sends K (RunPlan.group_size) and the ledger charges group privacy.
    grouped = (config.max_records_per_individual or 1) > 1
    trainer = DPTrainer(
        model,
        optimizer,
        data.train,
        loss_fn=_loss(config, data.train.tensors[1], data.num_classes),
        max_records_per_individual=config.max_records_per_individual,
        user_index=users,
        max_grad_norm=config.max_grad_norm,
        epochs=config.epochs,
        sample_rate=q if sampling is None else None,
        class_sample_rates=None if sampling is None else sampling.rates,
        schedule=_schedule(config, q, sampling),
        delta=config.delta,
        gate=gate if gate is not None else _gate(config, remote_gate),
        max_physical_batch_size=config.max_physical_batch_size,
        num_microbatches=config.microbatches,
        adaptive_clipping=None
        if config.adaptive_quantile is None
        else AdaptiveClipping(target_quantile=config.adaptive_quantile),
        engine=config.engine,
        noise_seed=config.seed if config.reproducible_noise else None,
        checkpoint_dir=config.checkpoint_dir,
        name=_same_on_every_rank(run_name(config)) if distributed else run_name(config),
        distributed=distributed,
    )
    if grouped:  # the local budget applies to the group of K: check the whole plan up front
        _check_group_budget(config, trainer)
    trainer.resume()
    result = trainer.fit(on_step=on_step, on_epoch=on_epoch, on_epoch_start=on_epoch_start)
    # An untrained model's test accuracy is not a result: report none when no epoch ran.
    trained = result.epochs_completed > 0
    test_loss, test_accuracy = evaluate(model, data.test) if trained else (None, None)
    last = result.history[-1] if result.history else {}
    group = group_epsilon(
        trainer.plan.mechanism(0, result.epochs_completed),
        delta=config.delta,
        group_size=trainer.group_size,
    )
    statement = run_statement(
        trainer.plan, result.epochs_completed, records_per_user=trainer.group_size,
        rates_from_class_counts=sampling is not None and sampling.from_class_counts,
        reproducible_seed=config.seed if config.reproducible_noise else None,
    )  # fmt: skip
    return {
        "run_name": trainer.plan.name,
        "epochs_completed": result.epochs_completed,
        "epochs_planned": trainer.plan.epochs,
        "stop_reason": result.stop_reason,
        "epsilon": group if grouped and result.epochs_completed else result.epsilon,
        "epsilon_per_record": result.epsilon,
        "epsilon_rdp": result.epsilon,
        "epsilon_pld": statement["epsilon_pld"],
        "max_records_per_individual": trainer.group_size,
        "privacy_unit": "example" if users is None else "user",
        "class_weights": config.class_weights,
        **_class_summary(trainer, sampling, result.epochs_completed),
        "delta": result.delta,
        "noise_multiplier": trainer.plan.schedule.noise_multiplier,
        "sample_rate": trainer.plan.sample_rate,
        "steps_per_epoch": trainer.plan.steps_per_epoch,
        "engine": trainer.engine_name,
        "train_accuracy": last.get("accuracy"),
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "checkpoint_path": result.checkpoint_path,
        "world_size": 1 if trainer.dist is None else trainer.dist.world_size,
        "reproducible_noise": trainer.reproducible_noise,
        "secure_noise": trainer.secure_noise,
        "statement": statement,
    }
