"""The privacy statement a training run prints at its end (TF Privacy's, with RDP and PLD).

The numbers are :func:`dp_core.statement.build_privacy_statement` of the steps the run trained:
the same function behind ``dpledger statement`` and ``GET /v1/runs/{id}/statement``.
"""

from __future__ import annotations

from typing import Any

from dp_core.statement import (
    build_privacy_statement,
    render_privacy_statement,
    reproducible_noise_note,
)
from dp_core.trainer.budget_gate import RunPlan
from dp_core.trainer.class_sampling import BALANCED_NOTE, epsilon_per_class

__all__ = ["TRAINER_MAX_FFT_POINTS", "run_statement"]

#: Bound on a PLD composition's work at the end of a run (a few seconds at most; beyond it the
#: grid is coarsened, then the PLD epsilon is reported as null).
TRAINER_MAX_FFT_POINTS = 1 << 24


def run_statement(
    plan: RunPlan,
    epochs: int,
    *,
    records_per_user: int = 1,
    rates_from_class_counts: bool = False,
    reproducible_seed: int | None = None,
) -> dict[str, Any]:
    """Return the statement of the first ``epochs`` epochs of ``plan``: JSON numbers and ``text``.

    With per-class sampling rates the statement is the one at q_max (the run's guarantee) and
    adds ``epsilon_per_class`` (per-record RDP epsilon of each class, at its rate q_c),
    ``class_sample_rates``, ``limiting_classes`` (those at q_max) and, when the rates were
    derived from the class counts, ``class_counts_public: true`` with a line saying so. A run
    with reproducible noise (``plan.reproducible_noise``; ``reproducible_seed`` names the seed)
    says that its guarantee does not hold against anyone who knows the seed.
    """
    statement = build_privacy_statement(
        sample_rate=plan.sample_rate,
        steps=plan.steps_per_epoch * epochs,
        delta=plan.delta,
        schedule=plan.schedule,
        records_per_user=records_per_user,
        max_fft_points=TRAINER_MAX_FFT_POINTS,
    )
    result = {**statement.to_dict(), "text": render_privacy_statement(statement)}
    if plan.class_sample_rates is not None:
        result = _with_classes(result, plan, epochs, rates_from_class_counts)
    result["reproducible_noise"] = plan.reproducible_noise
    if plan.reproducible_noise:
        result["text"] += "\n\n" + reproducible_noise_note(reproducible_seed)
    return result


def _with_classes(
    result: dict[str, Any], plan: RunPlan, epochs: int, from_counts: bool
) -> dict[str, Any]:
    """Add the per-class epsilons (and what they assume) to a statement."""
    rates = plan.class_sample_rates
    assert rates is not None
    epsilons = epsilon_per_class(plan, epochs)
    limiting = [c for c, q in enumerate(rates) if q == plan.sample_rate]
    lines = [
        "",
        f"Per-class Poisson sampling: a record of class c joins each step with probability q_c; "
        f"the guarantee above is the one at q_max = {plan.sample_rate:.6g}, set by class(es) "
        f"{', '.join(map(str, limiting))} (the epochs counted above are passes at q_max; the "
        f"run's epochs are ceil(N / sum_c q_c n_c) = {plan.steps_per_epoch} steps). Per-record "
        f"epsilon of each class (RDP, delta = {plan.delta:g}):",
        *(
            f"    class {c}: q = {q:.6g}, epsilon {e:.4f}"
            for c, (q, e) in enumerate(zip(rates, epsilons, strict=True))
        ),
    ]
    if from_counts:
        lines.append(f"Note: {BALANCED_NOTE}.")
    return {
        **result,
        "class_sample_rates": list(rates),
        "epsilon_per_class": list(epsilons),
        "limiting_classes": limiting,
        "class_counts_public": from_counts,
        "text": result["text"] + "\n" + "\n".join(lines),
    }
