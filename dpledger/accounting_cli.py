"""Accounting commands of the `dpledger` CLI: epsilon, noise-multiplier, max-steps."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from dp_core import (
    DpCoreError,
    calibrate_noise_multiplier,
    compute_epsilon,
    max_steps,
)
from dp_core.conversion import GridEdgeWarning

SampleRate = Annotated[
    float, typer.Option("--sample-rate", help="Poisson sampling rate q = batch / N.")
]
Delta = Annotated[float, typer.Option("--delta", help="Target delta, in (0, 1).")]
Schedule = Annotated[
    str,
    typer.Option(
        "--schedule",
        help="constant, inverse-time, geometric or exponential (Time/Step/Exp accepted).",
    ),
]
DecayRate = Annotated[float, typer.Option("--decay-rate", help="Decay rate k of the schedule.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _run(
    compute: Callable[[], dict[str, Any]], as_json: bool, human: Callable[[dict[str, Any]], str]
) -> None:
    """Run a computation; dp_core errors become one line on stderr and exit code 2."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GridEdgeWarning)
        try:
            result = compute()
        except DpCoreError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(json.dumps(result) if as_json else human(result))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def epsilon(
    sample_rate: SampleRate,
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ],
    steps: Annotated[int, typer.Option("--steps", help="Number of DP-SGD steps.")],
    delta: Delta,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    as_json: AsJson = False,
) -> None:
    """Epsilon spent by STEPS steps of DP-SGD (RDP accounting, CKS conversion)."""

    def compute() -> dict[str, Any]:
        r = compute_epsilon(
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=steps,
            delta=delta,
            schedule=schedule,
            decay_rate=decay_rate,
        )
        return {
            "epsilon": _finite(r.epsilon),
            "epsilon_grid": _finite(r.epsilon_grid),
            "order": r.order,
            "delta": delta,
            "steps": steps,
        }

    _run(
        compute,
        as_json,
        lambda r: (
            f"epsilon = {r['epsilon']:.4f} at delta = {r['delta']:g} after {r['steps']} steps "
            f"(Renyi order {r['order']:.3f}; best grid order gives {r['epsilon_grid']:.4f})"
        ),
    )


def noise_multiplier(
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", help="Epsilon to stay within.")
    ],
    delta: Delta,
    sample_rate: SampleRate,
    steps: Annotated[int, typer.Option("--steps", help="Number of DP-SGD steps.")],
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    as_json: AsJson = False,
) -> None:
    """Smallest noise multiplier (s0 for a decay) whose epsilon stays within the target."""

    def compute() -> dict[str, Any]:
        r = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            schedule=schedule,
            decay_rate=decay_rate,
        )
        return {"noise_multiplier": r.noise_multiplier, "epsilon": r.epsilon}

    _run(
        compute,
        as_json,
        lambda r: f"noise_multiplier = {r['noise_multiplier']:.4f} (epsilon = {r['epsilon']:.4f})",
    )


def max_steps_command(
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", help="Epsilon to stay within.")
    ],
    delta: Delta,
    sample_rate: SampleRate,
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ],
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    as_json: AsJson = False,
) -> None:
    """Largest number of DP-SGD steps whose epsilon stays within the target."""

    def compute() -> dict[str, Any]:
        r = max_steps(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            schedule=schedule,
            decay_rate=decay_rate,
        )
        return {"steps": r.steps, "epsilon": r.epsilon}

    _run(compute, as_json, lambda r: f"steps = {r['steps']} (epsilon = {r['epsilon']:.4f})")


def register(cli: typer.Typer) -> None:
    """Add the accounting commands to the root CLI."""
    cli.command("epsilon")(epsilon)
    cli.command("noise-multiplier")(noise_multiplier)
    cli.command("max-steps")(max_steps_command)
