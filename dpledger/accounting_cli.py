"""Accounting commands of the `dpledger` CLI: epsilon, noise-multiplier, max-steps.

Errors are translated in one place (:func:`run_command`): a dp_core error becomes one line on
stderr and exit code 2. The option types here are shared with `dpledger statement`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from typing import Annotated, Any

import typer

from dp_core import (
    InvalidParameterError,
    calibrate_noise_multiplier,
    compute_epsilon,
    compute_epsilon_pld,
    max_steps,
)
from dp_core.conversion import GridEdgeWarning
from dp_core.validation import non_negative_int, positive_float

SampleRate = Annotated[
    float, typer.Option("--sample-rate", help="Poisson sampling rate q = batch / N.")
]
OptionalSampleRate = Annotated[
    float | None,
    typer.Option("--sample-rate", help="Poisson sampling rate q = batch / N (or give -N, -B, -E)."),
]
OptionalSteps = Annotated[
    int | None, typer.Option("--steps", help="Number of DP-SGD steps (or give -N, -B, -E).")
]
DatasetSize = Annotated[
    int | None,
    typer.Option("--dataset-size", "-N", help="TF Privacy form: N examples (q = B/N)."),
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", "-B", help="TF Privacy form: expected batch size B.")
]
Epochs = Annotated[
    float | None,
    typer.Option("--epochs", "-E", help="TF Privacy form: epochs E (steps = ceil(E * ceil(N/B)))."),
]
Orders = Annotated[
    str | None,
    typer.Option(
        "--orders",
        help="Comma-separated Renyi orders (> 1) replacing the default grid, e.g. "
        "1.5,2,4,8,16,32,64,128,256,512,1024,2048,4096 to extend it.",
    ),
]
# The delta every command defaults to (train, fl and audit too): 1e-5, below 1/n for n > 1e5.
DEFAULT_DELTA = 1e-5
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


def run_command(
    compute: Callable[[], dict[str, Any]], as_json: bool, human: Callable[[dict[str, Any]], str]
) -> None:
    """Run a computation and print its result (dp_core's errors exit 2 through the root)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GridEdgeWarning)
        result = compute()
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(json.dumps(result) if as_json else human(result))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def parse_orders(text: str | None) -> list[float] | None:
    """The --orders option: a comma-separated list of Renyi orders, or None for the default grid."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidParameterError("orders", text, "must be comma-separated numbers") from None


def resolve_sampling(
    *,
    sample_rate: float | None,
    steps: int | None,
    dataset_size: int | None,
    batch_size: int | None,
    epochs: float | None,
) -> dict[str, Any]:
    """q and steps, given directly or in TF Privacy's form (q = B/N, steps = ceil(E ceil(N/B))).

    Returns:
        ``sample_rate`` and ``steps``, plus ``steps_per_epoch`` in the TF Privacy form.
    """
    tf_form = (dataset_size, batch_size, epochs)
    if all(v is None for v in tf_form):
        if sample_rate is None or steps is None:
            raise InvalidParameterError(
                "sample_rate", sample_rate,
                "give --sample-rate and --steps, or --dataset-size, --batch-size and --epochs",
            )  # fmt: skip
        return {"sample_rate": sample_rate, "steps": steps}
    if any(v is None for v in tf_form) or sample_rate is not None or steps is not None:
        raise InvalidParameterError(
            "dataset_size", dataset_size,
            "the TF Privacy form needs --dataset-size, --batch-size and --epochs "
            "(and neither --sample-rate nor --steps)",
        )  # fmt: skip
    n = non_negative_int("dataset_size", dataset_size)
    b = non_negative_int("batch_size", batch_size)
    e = positive_float("epochs", epochs)
    if not 0 < b <= n:
        raise InvalidParameterError("batch_size", batch_size, "must be in [1, dataset_size]")
    per_epoch = math.ceil(n / b)
    return {"sample_rate": b / n, "steps": math.ceil(e * per_epoch), "steps_per_epoch": per_epoch}


def _derived_line(r: dict[str, Any]) -> str:
    if "steps_per_epoch" not in r:
        return ""
    return (
        f"sample_rate = {r['sample_rate']:.6g} (batch / N), steps = {r['steps']} "
        f"({r['steps_per_epoch']} steps per epoch)\n"
    )


def epsilon(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ],
    delta: Delta = DEFAULT_DELTA,
    sample_rate: OptionalSampleRate = None,
    steps: OptionalSteps = None,
    dataset_size: DatasetSize = None,
    batch_size: BatchSize = None,
    epochs: Epochs = None,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    orders: Orders = None,
    as_json: AsJson = False,
) -> None:
    """Epsilon spent by DP-SGD: RDP (CKS conversion) and PLD accounting, side by side.

    In --json, `epsilon` is the RDP value (kept for compatibility), labelled again as
    `epsilon_rdp` beside `epsilon_pld`.
    """

    def compute() -> dict[str, Any]:
        run = resolve_sampling(
            sample_rate=sample_rate, steps=steps, dataset_size=dataset_size,
            batch_size=batch_size, epochs=epochs,
        )  # fmt: skip
        r = compute_epsilon(
            sample_rate=run["sample_rate"],
            noise_multiplier=noise_multiplier,
            steps=run["steps"],
            delta=delta,
            schedule=schedule,
            decay_rate=decay_rate,
            orders=parse_orders(orders),
        )
        pld = compute_epsilon_pld(
            sample_rate=run["sample_rate"],
            noise_multiplier=noise_multiplier,
            steps=run["steps"],
            delta=delta,
            schedule=schedule,
            decay_rate=decay_rate,
        )
        return {
            "epsilon": _finite(r.epsilon),
            "epsilon_rdp": _finite(r.epsilon),
            "epsilon_pld": _finite(pld.epsilon),
            "epsilon_grid": _finite(r.epsilon_grid),
            "order": r.order,
            "delta": delta,
            **run,
        }

    run_command(
        compute,
        as_json,
        lambda r: (
            f"{_derived_line(r)}"
            f"epsilon_rdp = {r['epsilon_rdp']:.4f} (Renyi order {r['order']:.3f}; best grid order "
            f"gives {r['epsilon_grid']:.4f})\n"
            f"epsilon_pld = {r['epsilon_pld']:.4f} (privacy loss distribution, tighter)\n"
            f"at delta = {r['delta']:g} after {r['steps']} steps"
        ),
    )


def noise_multiplier(
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", help="Epsilon to stay within.")
    ],
    sample_rate: SampleRate,
    steps: Annotated[int, typer.Option("--steps", help="Number of DP-SGD steps.")],
    delta: Delta = DEFAULT_DELTA,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    orders: Orders = None,
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
            orders=parse_orders(orders),
        )
        return {"noise_multiplier": r.noise_multiplier, "epsilon": r.epsilon}

    run_command(
        compute,
        as_json,
        lambda r: f"noise_multiplier = {r['noise_multiplier']:.4f} (epsilon = {r['epsilon']:.4f})",
    )


def max_steps_command(
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", help="Epsilon to stay within.")
    ],
    sample_rate: SampleRate,
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="sigma (s0 for a decay).")
    ],
    delta: Delta = DEFAULT_DELTA,
    schedule: Schedule = "constant",
    decay_rate: DecayRate = 0.0,
    orders: Orders = None,
    as_json: AsJson = False,
) -> None:
    """Largest number of DP-SGD steps whose epsilon stays within the target.

    Exits 2 when not even one step fits.
    """

    def compute() -> dict[str, Any]:
        r = max_steps(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            schedule=schedule,
            decay_rate=decay_rate,
            orders=parse_orders(orders),
        )
        if r.steps == 0:
            one = compute_epsilon(
                sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=1, delta=delta,
                schedule=schedule, decay_rate=decay_rate, orders=parse_orders(orders),
            )  # fmt: skip
            raise InvalidParameterError(
                "target_epsilon", target_epsilon,
                f"is unreachable: a single step already spends epsilon {one.epsilon:.4g}",
            )  # fmt: skip
        return {"steps": r.steps, "epsilon": r.epsilon}

    run_command(compute, as_json, lambda r: f"steps = {r['steps']} (epsilon = {r['epsilon']:.4f})")


def register(cli: typer.Typer) -> None:
    """Add the accounting commands to the root CLI."""
    cli.command("epsilon")(epsilon)
    cli.command("noise-multiplier")(noise_multiplier)
    cli.command("max-steps")(max_steps_command)
