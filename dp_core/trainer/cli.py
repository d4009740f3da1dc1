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

from dp_core.trainer.exit_codes import CommandError, ExitCode, exit_on_error

if TYPE_CHECKING:
    from dp_core.trainer.loop import EpochStart, EpochStats, StepStats
    from dp_core.trainer.recipe import TrainConfig

if TYPE_CHECKING:
    from dp_core.trainer.budget_gate import RemoteGateFactory
    from dp_core.trainer.tuning import TuneConfig, TuningLedger

__all__ = ["register"]


def _remote_gate(ctx: typer.Context) -> RemoteGateFactory | None:
    """Return the builder of ``--service``'s gate that the root command put in ``ctx.obj``.

    ``dpledger``'s root command passes ``dpledger.gate.http_gate`` (dp_core cannot import it).
    """
    obj = ctx.obj
    factory = obj.get("remote_gate") if isinstance(obj, dict) else None
    return factory if callable(factory) else None


class _ProgressBar:
    """One determinate bar per epoch on stderr (rich), drawn from the first charged epoch on.

    Nothing is drawn before the options are checked, the trainer is built and the gate has
    charged an epoch, so bad input or a run refused up front prints no bar.
    """

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._totals = {"n": 0, "loss": 0.0, "correct": 0}
        self._epsilon = 0.0

    def start_epoch(self, start: EpochStart) -> None:
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"),
                TextColumn("eps {task.fields[eps]:.3f}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        self._totals.update(n=0, loss=0.0, correct=0)
        self._task = self._progress.add_task(
            "train",
            total=start.steps,
            epoch=f"{start.number}/{start.epochs}",
            loss=0.0,
            acc=0.0,
            eps=self._epsilon,
        )

    def step(self, step: StepStats) -> None:
        totals = self._totals
        totals["n"] += step.batch_size
        totals["loss"] += step.loss_sum
        totals["correct"] += step.correct
        n = max(totals["n"], 1)
        loss, acc = totals["loss"] / n, totals["correct"] / n
        self._progress.update(self._task, advance=1, loss=loss, acc=acc)

    def end_epoch(self, stats: EpochStats) -> None:
        self._epsilon = stats.epsilon
        self._progress.update(self._task, eps=stats.epsilon)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _default_progress() -> bool:
    return sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"


def _train_with_progress(
    config: TrainConfig, progress: bool, remote_gate: RemoteGateFactory | None
) -> dict[str, Any]:
    from dp_core.trainer.recipe import run_training

    if not progress:
        return run_training(config, remote_gate=remote_gate)
    bar = _ProgressBar()
    try:
        return run_training(
            config,
            on_step=bar.step,
            on_epoch=bar.end_epoch,
            on_epoch_start=bar.start_epoch,
            remote_gate=remote_gate,
        )
    finally:
        bar.close()


def _refusal(summary: dict[str, Any]) -> CommandError:
    return CommandError(
        f"{summary['stop_reason']} (trained {summary['epochs_completed']} of "
        f"{summary['epochs_planned']} planned epochs)",
        exit_code=ExitCode.REFUSED,
    )


@exit_on_error
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
        typer.Option(
            help="mlp, cnn (TF Privacy's tutorial CNN, 28x28), vgg (GroupNorm, 32x32), or "
            "scatternet-linear / scatternet-cnn (fixed ScatterNet features, then a linear or "
            "small CNN head: Tramer & Boneh 2021)."
        ),
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
    service: Annotated[
        str | None,
        typer.Option(
            envvar="DPLEDGER_URL",
            help="Ledger service URL (used with --dataset when it comes from DPLEDGER_URL).",
        ),
    ] = None,
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
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of what may be public: the data split and the model's initialization. "
            "Noise and sampling come from secret OS entropy unless --reproducible-noise."
        ),
    ] = 0,
    reproducible_noise: Annotated[
        bool,
        typer.Option(
            "--reproducible-noise",
            help="Derive the noise and sampling from --seed too (debugging, tests). The privacy "
            "guarantee then does NOT hold against anyone who knows the seed; a warning is "
            "printed and the ledger and the statement record the run as such.",
        ),
    ] = False,
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
    class_sample_rates: Annotated[
        str | None,
        typer.Option(
            help="Per-class Poisson sampling, DP-friendly rebalancing: 'CLASS:q,...' (every "
            "class, each q in (0,1], fixed without looking at the data) or 'balanced' (q_c = "
            "batch-size/(K n_c) from the training data's class counts, which are then DECLARED "
            "PUBLIC). A record of class c joins each step with probability q_c and gets the "
            "epsilon of q_c ('epsilon_per_class'); the run's guarantee, and the ledger's charge, "
            "is the one at max q_c. Expected batch sum_c q_c n_c (explicit rates replace "
            "--batch-size); an epoch is ceil(N / that) steps.",
        ),
    ] = None,
    run_name: Annotated[
        str | None,
        typer.Option(
            help="Name of the run in the ledger and on the dashboard [default: "
            "dpledger-train-DATA-YYYYMMDD-HHMMSS, or the resumed checkpoint's].",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="A progress bar per epoch on stderr [default: when stderr is a terminal].",
            show_default=False,
        ),
    ] = None,
    print_statement: Annotated[
        bool | None,
        typer.Option(
            "--statement/--no-statement",
            help="Print the run's privacy statement (RDP and PLD epsilon, once-per-epoch and "
            "user level) on stderr at the end [default: when stderr is a terminal]; the JSON "
            "summary always holds it under 'statement'.",
            show_default=False,
        ),
    ] = None,
    user_index: Annotated[
        str | None,
        typer.Option(
            help="User-level DP-SGD: a file (.npy, or one integer per line) with the user id of "
            "each training record in the loader's order; users are Poisson-sampled (--batch-size "
            "counts users) and each user's summed gradient is clipped. Local runs only.",
        ),
    ] = None,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune/--no-tune",
            help="Private hyperparameter tuning (Papernot & Steinke 2022): ONE job over the "
            "--tune-lrs x --tune-noise grid is registered (and charged) before any candidate "
            "trains; a random number of candidates train and the best (test accuracy) is "
            "reported with the tuning cost included.",
        ),
    ] = False,
    tune_lrs: Annotated[
        str | None, typer.Option(help="Comma-separated learning rates [default: lr/2,lr,2lr].")
    ] = None,
    tune_noise: Annotated[
        str | None,
        typer.Option(help="Comma-separated noise multipliers [default: sigma,1.5sigma]."),
    ] = None,
    tune_distribution: Annotated[
        str, typer.Option(help="negative_binomial or poisson: the number of repetitions.")
    ] = "negative_binomial",
    tune_eta: Annotated[float, typer.Option(help="eta of the negative binomial.")] = 1.0,
    tune_gamma: Annotated[float, typer.Option(help="gamma of the negative binomial.")] = 0.2,
    tune_mu: Annotated[float, typer.Option(help="Mean of the Poisson distribution.")] = 5.0,
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

    Exit status: 0 when every planned epoch ran; 3 when the privacy budget refused the run or
    stopped it early (one line on stderr says why; the JSON summary still goes to stdout, with
    no test accuracy when no epoch ran); 2 for invalid input; 1 when the ledger is unreachable.
    Under torchrun every rank trains its shard of the data; rank 0 alone asks the ledger, adds
    the noise, checkpoints, shows the progress bar and prints the summary.
    """
    from dp_core.trainer.recipe import TrainConfig

    _check_batch_size_with_class_rates(ctx, class_sample_rates, batch_size)
    service = _service_url(ctx, service, dataset)
    _probe_service(ctx, service)
    config = TrainConfig(
        data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
        noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, max_grad_norm=max_grad_norm,
        schedule=schedule, decay_rate=decay_rate, delta=delta, checkpoint_dir=checkpoint_dir,
        service=service, token=token, dataset=dataset, reserve=reserve,
        budget_epsilon=budget_epsilon, max_physical_batch_size=max_physical_batch_size, microbatches=microbatches,
        adaptive_quantile=adaptive_quantile, engine=engine, seed=seed,
        reproducible_noise=reproducible_noise, threads=threads,
        distributed=distributed, run_name=run_name,
        max_records_per_individual=max_records_per_individual, class_weights=class_weights,
        user_index=user_index, class_sample_rates=class_sample_rates,
    )  # fmt: skip
    if tune:
        grid = _tune_config(config, tune_lrs, tune_noise, tune_distribution,
                            tune_eta, tune_gamma, tune_mu)  # fmt: skip
        _tune(ctx, config, grid)
        return
    main_rank = os.environ.get("RANK", "0") == "0"
    show = (_default_progress() if progress is None else progress) and main_rank
    summary = _train_with_progress(config, show, _remote_gate(ctx))
    if not str(summary["stop_reason"]).startswith("refused"):
        if main_rank:
            sys.stdout.write(json.dumps(summary) + "\n")
            if sys.stderr.isatty() if print_statement is None else print_statement:
                sys.stderr.write(str(summary["statement"]["text"]) + "\n")
        return
    if not main_rank:  # rank 0 alone reports; every rank exits with the same status
        raise SystemExit(int(ExitCode.REFUSED))
    sys.stdout.write(json.dumps(summary) + "\n")
    raise _refusal(summary)


def _probe_service(ctx: typer.Context, service: str | None) -> None:
    """Ask the ledger whether it answers before torch and the data load (``dpledger`` only).

    The root command passes ``probe_ledger``; it says on stderr when it retries, and raises the
    trainer's LedgerError (exit 1, one line) when the service never answers.
    """
    obj = ctx.obj
    probe = obj.get("probe_ledger") if isinstance(obj, dict) else None
    if service is not None and callable(probe) and os.environ.get("RANK", "0") == "0":
        probe(service)


def _service_url(ctx: typer.Context, service: str | None, dataset: str | None) -> str | None:
    """``--service``, or ``DPLEDGER_URL`` when ``--dataset`` names a ledger dataset.

    A URL from the environment alone leaves a local run local (the rule of every dpledger command
    with ``--service``; see ``dpledger.options``, which dp_core may not import).
    """
    from click.core import ParameterSource

    if service is None or not service.strip():
        return None
    from_environment = ctx.get_parameter_source("service") is ParameterSource.ENVIRONMENT
    return None if from_environment and dataset is None else service


def _check_batch_size_with_class_rates(
    ctx: typer.Context, class_sample_rates: str | None, batch_size: int
) -> None:
    """Refuse --batch-size given with explicit per-class rates (they set the expected batch)."""
    from click.core import ParameterSource

    from dp_core.errors import InvalidParameterError

    if class_sample_rates is None or class_sample_rates.strip() == "balanced":
        return
    if ctx.get_parameter_source("batch_size") not in (ParameterSource.DEFAULT, None):
        raise InvalidParameterError(
            "batch_size",
            batch_size,
            "is set by explicit --class-sample-rates (expected batch sum_c q_c n_c): drop it",
        )


def _floats(name: str, text: str) -> tuple[float, ...]:
    from dp_core.errors import InvalidParameterError

    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidParameterError(name, text, "must be comma-separated numbers") from None


def _tune_config(
    config: TrainConfig, lrs: str | None, noise: str | None, distribution: str,
    eta: float, gamma: float, mu: float,
) -> TuneConfig:  # fmt: skip
    from dp_core.errors import InvalidParameterError
    from dp_core.trainer.tuning import TuneConfig

    sigma = config.noise_multiplier
    if noise:
        sigmas = _floats("tune_noise", noise)
    elif sigma is not None:
        sigmas = (sigma, 1.5 * sigma)
    else:
        raise InvalidParameterError("tune_noise", None, "give --tune-noise or --noise-multiplier")
    return TuneConfig(
        lrs=_floats("tune_lrs", lrs) if lrs else (config.lr / 2, config.lr, 2 * config.lr),
        noise_multipliers=sigmas, distribution=distribution, eta=eta, gamma=gamma, mu=mu,
    )  # fmt: skip


def _tuning_ledger(ctx: typer.Context, config: TrainConfig) -> TuningLedger | None:
    """The service's tuning ledger (--service), a local budget (--budget-epsilon), or none."""
    from dp_core.errors import InvalidParameterError
    from dp_core.trainer.tuning import LocalTuningLedger

    if config.service is None:
        budget = config.budget_epsilon
        return None if budget is None else LocalTuningLedger(budget_epsilon=budget)
    if not config.token or not config.dataset:
        raise InvalidParameterError("service", config.service, "needs --token and --dataset too")
    if config.budget_epsilon is not None:
        raise InvalidParameterError(
            "budget_epsilon", config.budget_epsilon, "is for local runs; the service holds it"
        )
    obj = ctx.obj
    factory = obj.get("remote_tuning") if isinstance(obj, dict) else None
    if not callable(factory):
        raise InvalidParameterError("service", config.service, "needs the dpledger command")
    ledger: TuningLedger = factory(base_url=config.service, token=config.token,
                                   dataset=config.dataset)  # fmt: skip
    return ledger


def _tune(ctx: typer.Context, config: TrainConfig, grid: TuneConfig) -> None:
    """Run ``train --tune``: refused up front (exit 3, nothing trained) or the best candidate."""
    from dp_core.trainer.data import load_data
    from dp_core.trainer.recipe import run_name, run_training
    from dp_core.trainer.tuning import TuningRefused, check_tunable, run_tuning, tuning_plan

    check_tunable(config)
    data = load_data(config.data, seed=config.seed)
    plan = tuning_plan(config, grid, num_examples=len(data.train), name=run_name(config))
    ledger = _tuning_ledger(ctx, config)
    try:
        summary = run_tuning(config, grid, plan, ledger=ledger, train_one=run_training)
    except TuningRefused as refusal:
        epsilon, _ = plan.epsilon()
        refused = {"run_name": plan.name, "stop_reason": str(refusal), "candidates_trained": 0,
                   "epsilon": 0.0, "epsilon_planned": epsilon}  # fmt: skip
        sys.stdout.write(json.dumps(refused) + "\n")
        raise CommandError(str(refusal), exit_code=ExitCode.REFUSED) from None
    sys.stdout.write(json.dumps(summary) + "\n")


def register(cli: typer.Typer) -> None:
    """Add ``train`` to the root ``dpledger`` command."""
    cli.command("train")(train)
