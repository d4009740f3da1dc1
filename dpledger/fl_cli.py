"""``dpledger fl``: user-level DP-FedAvg on Flower over synthetic users, charged round by round.

Needs the ``federated`` extra (Flower, with Ray for its simulation engine); it is imported when
the command runs, so the rest of the CLI works without it. Exit codes as ``dpledger train``: 3
and one stderr line when the ledger refuses (the JSON summary still says how many rounds ran), 2
for invalid input, 1 when a round fails (too many SecAgg+ drop-outs; the summary is printed too).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dp_core.randomness import warn_reproducible_noise
from dpledger.errors import BudgetRefusal, CommandError, ExitCode, RuntimeFailure, ledger_at
from dpledger.options import SERVICE_ENV, TOKEN_ENV, service_url

__all__ = ["fl", "register"]


class _Bar:
    """One determinate bar on stderr, advanced when a round is admitted (rich)."""

    def __init__(self, rounds: int, enabled: bool) -> None:
        self._rounds, self._enabled = rounds, enabled
        self._progress: Any = None
        self._task: Any = None

    def advance(self, round_index: int) -> None:
        if not self._enabled:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("round"), BarColumn(), MofNCompleteColumn(),
                console=Console(file=sys.stderr), transient=False,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("fl", total=self._rounds)
        self._progress.update(self._task, completed=round_index + 1)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def refused_summary(o: dict[str, Any], refusal: BaseException) -> dict[str, Any]:
    """The JSON summary of a job the ledger refused at admission: nothing ran, nothing spent."""
    run_id = getattr(refusal.__cause__, "run_id", None)
    return {
        "rounds_completed": 0, "rounds_planned": o["rounds"], "rounds_charged": 0,
        "stop_reason": str(refusal), "epsilon": 0.0, "delta": o["delta"], "test_accuracy": None,
        "secure_aggregation": o["secure_aggregation"], "users": o["users"],
        "clients_per_round": o["clients_per_round"], "sample_rate": o["sample_rate"],
        "noise_multiplier": o["noise_multiplier"], "clip": o["clip"], "model_path": None,
        "run_id": run_id, "data": o["data"], "engine": o["engine"],
    }  # fmt: skip


def fl(
    ctx: typer.Context,
    users: Annotated[int, typer.Option("--users", help="Synthetic users (clients) N.")],
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds R.")],
    noise_multiplier: Annotated[
        float,
        typer.Option("--noise-multiplier", help="sigma: noise std sigma*C on the sum (0: none)."),
    ],
    clip: Annotated[
        float, typer.Option("--clip", help="C: each user's update is clipped to this L2 norm.")
    ],
    clients_per_round: Annotated[
        int | None,
        typer.Option("--clients-per-round", help="Users drawn per round, without replacement."),
    ] = None,
    sample_rate: Annotated[
        float | None,
        typer.Option(
            "--sample-rate", help="Poisson sampling instead: each user with this probability."
        ),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="'digits' (scikit-learn's), or 'mnist:DIR' / 'fashion-mnist:DIR' (IDX files).",
        ),
    ] = "digits",
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="'simulation': Flower's simulation engine (Ray); 'inprocess': one process, no Ray.",
        ),
    ] = "simulation",
    secure_aggregation: Annotated[
        bool,
        typer.Option("--secure-aggregation", help="Flower's SecAgg+: the server sees sums only."),
    ] = False,
    delta: Annotated[float, typer.Option("--delta", help="Delta of the reported epsilon.")] = 1e-5,
    local_epochs: Annotated[int, typer.Option("--local-epochs")] = 5,
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = 0.5,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Seed of the data split into users. Server noise and user sampling are secret "
            "(OS entropy) unless --reproducible-noise.",
        ),
    ] = 0,
    reproducible_noise: Annotated[
        bool,
        typer.Option(
            "--reproducible-noise",
            help="Derive the server's noise and the user sampling from --seed (debugging, tests): "
            "the guarantee then does NOT hold against anyone who knows the seed; a warning is "
            "printed and the ledger records the run as such.",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to save the model (.npz).")
    ] = None,
    service: Annotated[
        str | None,
        typer.Option("--service", envvar=SERVICE_ENV, help="Ledger URL: charge each round."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar=TOKEN_ENV, help="Bearer token.")
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="A user-level dataset.")] = None,
    reservation: Annotated[
        str, typer.Option("--reservation", help="'plan' or 'epoch' (per round).")
    ] = "plan",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Federated learning with user-level DP (DP-FedAvg on Flower), charged to the ledger.

    A refusal by the ledger (up front or at a round) prints the summary and exits 3.
    """
    options = {k: v for k, v in locals().items() if k != "ctx"}
    options["service"] = service_url(ctx, service, names_ledger_object=dataset is not None)
    summary = _run(**options)
    typer.echo(json.dumps(summary) if as_json else _human(summary))
    reason = summary["stop_reason"]
    if reason.startswith("secure_aggregation_failed"):
        raise RuntimeFailure(reason)
    if reason.startswith("refused"):
        raise BudgetRefusal(reason)
    if reason != "completed":
        raise BudgetRefusal(f"refused: {reason}")


def _run(**o: Any) -> dict[str, Any]:
    if o["engine"] not in ("simulation", "inprocess"):
        raise CommandError(
            "error: --engine must be 'simulation' or 'inprocess'", exit_code=ExitCode.USAGE
        )
    if o["service"] is not None and (o["dataset"] is None or o["noise_multiplier"] <= 0):
        raise CommandError(
            "error: --service needs --dataset and a positive --noise-multiplier",
            exit_code=ExitCode.USAGE,
        )
    try:
        from dpledger.federated.apps import EngineStopped, FederatedConfig
        from dpledger.federated.engine import EngineError
        from dpledger.federated.runner import LedgerRefusedError, run_federated
    except ModuleNotFoundError as missing:
        raise CommandError(
            f"error: dpledger fl needs Flower ({missing.name}): pip install 'dpledger[federated]'",
            exit_code=ExitCode.USAGE,
        ) from None
    # Flower logs every stage at INFO, and a failing client or engine with tracebacks at ERROR:
    # the summary and the one error line say what happened.
    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    if (o["clients_per_round"] is None) == (o["sample_rate"] is None):
        raise CommandError(
            "error: give exactly one of --clients-per-round and --sample-rate",
            exit_code=ExitCode.USAGE,
        )
    try:
        config = FederatedConfig(
            users=o["users"], rounds=o["rounds"], clients_per_round=o["clients_per_round"] or 0,
            sample_rate=o["sample_rate"], noise_multiplier=o["noise_multiplier"], clip=o["clip"],
            secure_aggregation=o["secure_aggregation"], local_epochs=o["local_epochs"],
            learning_rate=o["learning_rate"], seed=o["seed"],
            reproducible_noise=o["reproducible_noise"],
        )  # fmt: skip
    except ValueError as error:
        raise CommandError(f"error: {error}", exit_code=ExitCode.USAGE) from None
    if config.reproducible_noise:
        warn_reproducible_noise(config.seed)
    bar = _Bar(o["rounds"], enabled=not o["as_json"])
    try:
        with ledger_at(o["service"] or "(none)"):
            result, _ = run_federated(
                config,
                delta=o["delta"],
                data=o["data"],
                engine=o["engine"],
                gate_factory=_gate_factory(o),
                out=o["out"],
                on_round=bar.advance,
            )
    except LedgerRefusedError as refused:
        return refused_summary(o, refused)
    except (EngineError, EngineStopped) as error:
        raise CommandError(f"error: {error}", exit_code=ExitCode.FAILURE) from None
    except ValueError as error:
        raise CommandError(
            f"error: {' '.join(str(error).split())}", exit_code=ExitCode.USAGE
        ) from None
    finally:
        bar.close()
    return result.to_json()


def _gate_factory(o: dict[str, Any]) -> Any:
    if o["service"] is None:
        return None
    from dpledger.client import LedgerClient
    from dpledger.federated.runner import LedgerRoundGate, ledger_mechanism

    def make(record: Any) -> LedgerRoundGate:
        client = LedgerClient(o["service"], token=o["token"])
        return LedgerRoundGate(
            client, dataset=o["dataset"], name="dpledger fl", mechanism=ledger_mechanism(record),
            reservation=o["reservation"], reproducible_noise=o["reproducible_noise"],
        )  # fmt: skip

    return make


def _human(s: dict[str, Any]) -> str:
    if s["test_accuracy"] is None:  # refused before the first round
        return f"rounds 0/{s['rounds_planned']} ({s['stop_reason']}); nothing trained"
    eps = "inf (no noise)" if s["epsilon"] is None else f"{s['epsilon']:.4g}"
    return (
        f"rounds {s['rounds_completed']}/{s['rounds_planned']} ({s['stop_reason']}); user-level"
        f" epsilon {eps} at delta {s['delta']:g}; test accuracy {s['test_accuracy']:.4f};"
        f" secure aggregation {'on' if s['secure_aggregation'] else 'off'}"
    )


def register(cli: typer.Typer) -> None:
    """Add the `fl` command to the root CLI."""
    cli.command("fl")(fl)
