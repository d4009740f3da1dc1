"""``dpledger train``: DP-SGD on digits or MNIST, asking a budget gate before each epoch.

This module must not import torch at import time (``dpledger --help`` and the service stay
light); the command body imports :mod:`dp_core.trainer.recipe` when it runs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dp_core.errors import DpCoreError

if TYPE_CHECKING:
    from dp_core.trainer.budget_gate import RemoteGateFactory

__all__ = ["register"]


def _remote_gate(ctx: typer.Context) -> RemoteGateFactory | None:
    """Return the builder of ``--service``'s gate that the root command put in ``ctx.obj``.

    ``dpledger``'s root command passes ``dpledger.gate.http_gate`` (dp_core cannot import it).
    """
    obj = ctx.obj
    factory = obj.get("remote_gate") if isinstance(obj, dict) else None
    return factory if callable(factory) else None


def _progress_callbacks() -> tuple[Any, Any, Any]:
    """Return (progress context, on_step, on_epoch) drawing a rich bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dp_core.trainer.loop import EpochStats, StepStats

    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}  eps {task.fields[eps]:.3f}"
        ),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("train", total=None, epoch=0, loss=0.0, acc=0.0, eps=0.0)
    totals = {"n": 0, "loss": 0.0, "correct": 0}

    def on_step(step: StepStats) -> None:
        totals["n"] += step.batch_size
        totals["loss"] += step.loss_sum
        totals["correct"] += step.correct
        n = max(totals["n"], 1)
        progress.update(task, advance=1, loss=totals["loss"] / n, acc=totals["correct"] / n)

    def on_epoch(stats: EpochStats) -> None:
        totals.update(n=0, loss=0.0, correct=0)
        progress.update(task, epoch=stats.epoch + 1, eps=stats.epsilon)

    return progress, on_step, on_epoch


def train(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Option(
            help="'digits' (scikit-learn's), 'mnist:DIR' or 'fashion-mnist:DIR' (IDX files), "
            "'cifar10:DIR' (python batches). Nothing is downloaded."
        ),
    ] = "digits",
    model: Annotated[
        str,
        typer.Option(help="mlp, cnn (TF Privacy's tutorial CNN, 28x28) or vgg (GroupNorm, 32x32)."),
    ] = "mlp",
    epochs: Annotated[int, typer.Option(min=1, help="Planned epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Expected (Poisson) batch size qN.")] = 256,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1.0,
    optimizer: Annotated[str, typer.Option(help="sgd, momentum, adam or adagrad.")] = "sgd",
    noise_multiplier: Annotated[
        float | None, typer.Option(help="sigma (s0 of a schedule).")
    ] = None,
    target_epsilon: Annotated[
        float | None, typer.Option(help="Calibrate sigma to this epsilon.")
    ] = None,
    max_grad_norm: Annotated[float, typer.Option(help="Per-example clip norm C.")] = 1.0,
    schedule: Annotated[
        str, typer.Option(help="constant, inverse-time, geometric, exponential.")
    ] = "constant",
    decay_rate: Annotated[float, typer.Option(help="Decay rate k of the schedule.")] = 0.0,
    delta: Annotated[float, typer.Option(help="delta of the reported epsilon.")] = 1e-5,
    checkpoint_dir: Annotated[
        str | None, typer.Option(help="Save/resume checkpoints here.")
    ] = None,
    service: Annotated[str | None, typer.Option(help="Ledger service URL.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="DPLEDGER_TOKEN", help="Bearer token.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name in the ledger.")] = None,
    reserve: Annotated[
        str,
        typer.Option(
            help="With --service: 'plan' reserves every epoch at admission (guaranteed); 'epoch'"
            " passes each epoch through the ledger's filter when it starts (may stop early)."
        ),
    ] = "plan",
    budget_epsilon: Annotated[float | None, typer.Option(help="Local budget (no service).")] = None,
    max_physical_batch_size: Annotated[
        int | None, typer.Option(help="Memory cap per pass.")
    ] = None,
    microbatches: Annotated[
        int | None, typer.Option(help="TF Privacy microbatches per step.")
    ] = None,
    adaptive_quantile: Annotated[
        float | None, typer.Option(help="Adaptive clipping quantile.")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, bookkeeping or func.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of data split, init, sampling, noise.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    max_records_per_individual: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="K: the most records one person may have. Exact duplicate records are refused "
            "unless declared; the run is then accounted with group privacy for K.",
        ),
    ] = None,
    class_weights: Annotated[
        str | None,
        typer.Option(
            help="'balanced' or comma-separated per-class weights: a class-weighted loss (each "
            "example weighted, then clipped), the DP-safe alternative to SMOTE/oversampling."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    distributed: Annotated[
        bool | None,
        typer.Option(
            "--distributed/--no-distributed",
            help="Data-parallel over torch.distributed (gloo); default: when torchrun's "
            "WORLD_SIZE > 1. Launch: torchrun --nproc-per-node 2 --no-python dpledger train ...",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train with DP-SGD, asking the ledger (or a local budget) before each epoch; print JSON.

    Under torchrun every rank trains its shard of the data; rank 0 alone asks the ledger, adds
    the noise, checkpoints, shows the progress bar and prints the summary.
    """
    from dp_core.trainer.errors import LedgerError
    from dp_core.trainer.recipe import TrainConfig, run_training

    config = TrainConfig(
        data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, max_grad_norm=max_grad_norm,
        schedule=schedule, decay_rate=decay_rate, delta=delta, checkpoint_dir=checkpoint_dir,
        service=service, token=token, dataset=dataset, reserve=reserve,
        budget_epsilon=budget_epsilon, max_physical_batch_size=max_physical_batch_size, microbatches=microbatches,
        adaptive_quantile=adaptive_quantile, engine=engine, seed=seed, threads=threads,
        distributed=distributed,
        max_records_per_individual=max_records_per_individual, class_weights=class_weights,
    )  # fmt: skip
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        if progress and main_rank:
            bar, on_step, on_epoch = _progress_callbacks()
            with bar:
                summary = run_training(
                    config, on_step=on_step, on_epoch=on_epoch, remote_gate=_remote_gate(ctx)
                )
        else:
            summary = run_training(config, remote_gate=_remote_gate(ctx))
    except LedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except DpCoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if main_rank:
        sys.stdout.write(json.dumps(summary) + "\n")


def register(cli: typer.Typer) -> None:
    """Add ``train`` to the root ``dpledger`` command."""
    cli.command("train")(train)
