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
from dpledger.accounting_cli import (
    DEFAULT_DELTA,
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
from dpledger.client import LedgerClient
from dpledger.errors import UsageError, ledger_at
from dpledger.options import SERVICE_ENV, TOKEN_ENV, service_url

RecordsPerUser = Annotated[
    int, typer.Option("--records-per-user", "-K", help="User-level epsilon for K records.")
]


def statement(
    ctx: typer.Context,
    noise_multiplier: Annotated[
        float | None, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ] = None,
    delta: Annotated[
        float, typer.Option("--delta", help="Target delta, in (0, 1) (offline).")
    ] = DEFAULT_DELTA,
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
    service: Annotated[
        str | None, typer.Option("--service", envvar=SERVICE_ENV, help="Ledger service URL.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar=TOKEN_ENV, help="Bearer token.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Privacy statement: example-level (RDP and PLD), once-per-epoch and user-level epsilon.

    Offline from the run's parameters, or, with --run ID --service URL --token T, as the ledger
    holds the run (its charged steps, the dataset's delta and its spent epsilon).
    """
    if run is not None:
        url = service_url(ctx, service, names_ledger_object=True)
        _from_ledger(run, url, token, records_per_user, as_json)
        return

    def compute() -> dict[str, Any]:
        if noise_multiplier is None:
            raise InvalidParameterError(
                "noise_multiplier", noise_multiplier, "give --noise-multiplier"
                " (or --run ID to read a run from the ledger)",
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
        raise UsageError(f"--run needs --service URL (or {SERVICE_ENV})")
    with ledger_at(service), LedgerClient(service, token=token) as client:
        read = client.statement(run, records_per_user=records_per_user)
    typer.echo(json.dumps(read.model_dump(mode="json")) if as_json else read.text)


def register(cli: typer.Typer) -> None:
    """Add `statement` to the root CLI."""
    cli.command("statement")(statement)
