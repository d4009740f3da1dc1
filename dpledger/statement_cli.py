"""`dpledger statement`: a TF-Privacy-style privacy statement of one DP-SGD run.

The numbers come from :func:`dp_core.statement.build_privacy_statement`, the same pure function
the service can serve, so the CLI and the API agree. Reading a run from the ledger
(`--run ID --service URL --token T`) is not offered here yet.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dp_core.schedules import NoiseSchedule
from dp_core.statement import build_privacy_statement, render_privacy_statement
from dpledger.accounting_cli import (
    AsJson,
    BatchSize,
    DatasetSize,
    DecayRate,
    Delta,
    Epochs,
    OptionalSampleRate,
    OptionalSteps,
    Orders,
    Schedule,
    parse_orders,
    resolve_sampling,
    run_command,
)


def statement(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ],
    delta: Delta,
    sample_rate: OptionalSampleRate = None,
    steps: OptionalSteps = None,
    dataset_size: DatasetSize = None,
    batch_size: BatchSize = None,
    epochs: Epochs = None,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    records_per_user: Annotated[
        int, typer.Option("--records-per-user", "-K", help="User-level epsilon for K records.")
    ] = 1,
    orders: Orders = None,
    as_json: AsJson = False,
) -> None:
    """Privacy statement: example-level (RDP and PLD), once-per-epoch and user-level epsilon."""

    def compute() -> dict[str, Any]:
        run = resolve_sampling(
            sample_rate=sample_rate, steps=steps, dataset_size=dataset_size,
            batch_size=batch_size, epochs=epochs,
        )  # fmt: skip
        result = build_privacy_statement(
            sample_rate=run["sample_rate"],
            steps=run["steps"],
            delta=delta,
            schedule=NoiseSchedule(
                kind=schedule, noise_multiplier=noise_multiplier, decay_rate=decay_rate
            ),
            records_per_user=records_per_user,
            orders=parse_orders(orders),
        )
        return {**result.to_dict(), "text": render_privacy_statement(result)}

    run_command(compute, as_json, lambda r: str(r["text"]))


def register(cli: typer.Typer) -> None:
    """Add `statement` to the root CLI."""
    cli.command("statement")(statement)
