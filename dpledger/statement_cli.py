"""`dpledger statement`: a TF-Privacy-style privacy statement of one DP-SGD run.

Offline, the numbers come from :func:`dp_core.statement.build_privacy_statement`; with
``--run ID --service URL --token T`` the statement is the ledger's (``GET /v1/runs/{id}/statement``
through :class:`dpledger.client.LedgerClient`), whose DP-SGD part is the same pure function applied
to the steps the run charged, so the CLI and the API agree.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dp_core.errors import InvalidParameterError
from dp_core.schedules import NoiseSchedule
from dp_core.statement import build_privacy_statement, render_privacy_statement
from dp_core.trainer.exit_codes import CommandError, ExitCode
from dpledger.accounting_cli import (
    AsJson,
    BatchSize,
    DatasetSize,
    DecayRate,
    Epochs,
    OptionalSampleRate,
    OptionalSteps,
    Orders,
    Schedule,
    parse_orders,
    resolve_sampling,
    run_command,
)
from dpledger.client import LedgerClient, LedgerError

RecordsPerUser = Annotated[
    int, typer.Option("--records-per-user", "-K", help="User-level epsilon for K records.")
]


def statement(
    noise_multiplier: Annotated[
        float | None, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ] = None,
    delta: Annotated[
        float | None, typer.Option("--delta", help="Target delta, in (0, 1) (offline).")
    ] = None,
    sample_rate: OptionalSampleRate = None,
    steps: OptionalSteps = None,
    dataset_size: DatasetSize = None,
    batch_size: BatchSize = None,
    epochs: Epochs = None,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    records_per_user: RecordsPerUser = 1,
    orders: Orders = None,
    run: Annotated[
        int | None, typer.Option("--run", help="Read run ID's statement from the ledger.")
    ] = None,
    service: Annotated[str | None, typer.Option("--service", help="Ledger service URL.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="DPLEDGER_TOKEN", help="Bearer token.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Privacy statement: example-level (RDP and PLD), once-per-epoch and user-level epsilon.

    Offline from the run's parameters, or, with --run ID --service URL --token T, as the ledger
    holds the run (its charged steps, the dataset's delta and its spent epsilon).
    """
    if run is not None:
        _from_ledger(run, service, token, records_per_user, as_json)
        return

    def compute() -> dict[str, Any]:
        if noise_multiplier is None or delta is None:
            raise InvalidParameterError(
                "noise_multiplier", noise_multiplier, "give --noise-multiplier and --delta"
                " (or --run ID --service URL to read a run from the ledger)",
            )  # fmt: skip
        plan = resolve_sampling(
            sample_rate=sample_rate, steps=steps, dataset_size=dataset_size,
            batch_size=batch_size, epochs=epochs,
        )  # fmt: skip
        result = build_privacy_statement(
            sample_rate=plan["sample_rate"],
            steps=plan["steps"],
            delta=delta,
            schedule=NoiseSchedule(
                kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate
            ),
            records_per_user=records_per_user,
            orders=parse_orders(orders),
        )
        return {**result.to_dict(), "text": render_privacy_statement(result)}

    run_command(compute, as_json, lambda r: str(r["text"]))


def _from_ledger(
    run: int, service: str | None, token: str | None, records_per_user: int, as_json: bool
) -> None:
    """Print the ledger's statement of ``run`` (exit 2 for a 4xx answer, 1 when it failed)."""
    if service is None:
        raise CommandError("error: --run needs --service URL", exit_code=ExitCode.USAGE)
    try:
        with LedgerClient(service, token=token) as client:
            read = client.statement(run, records_per_user=records_per_user)
    except LedgerError as error:
        client_side = error.status is not None and 400 <= error.status < 500
        code = ExitCode.USAGE if client_side else ExitCode.FAILURE
        raise CommandError(f"error: the ledger at {service}: {error}", exit_code=code) from None
    typer.echo(json.dumps(read.model_dump(mode="json")) if as_json else read.text)


def register(cli: typer.Typer) -> None:
    """Add `statement` to the root CLI."""
    cli.command("statement")(statement)
