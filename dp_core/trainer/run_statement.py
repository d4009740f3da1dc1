"""The privacy statement a training run prints at its end (TF Privacy's, with RDP and PLD).

The numbers are :func:`dp_core.statement.build_privacy_statement` of the steps the run trained:
the same function behind ``dpledger statement`` and ``GET /v1/runs/{id}/statement``.
"""

from __future__ import annotations

from typing import Any

from dp_core.statement import build_privacy_statement, render_privacy_statement
from dp_core.trainer.budget_gate import RunPlan

__all__ = ["TRAINER_MAX_FFT_POINTS", "run_statement"]

#: Bound on a PLD composition's work at the end of a run (a few seconds at most; beyond it the
#: grid is coarsened, then the PLD epsilon is reported as null).
TRAINER_MAX_FFT_POINTS = 1 << 24


def run_statement(plan: RunPlan, epochs: int, *, records_per_user: int = 1) -> dict[str, Any]:
    """Return the statement of the first ``epochs`` epochs of ``plan``: JSON numbers and ``text``."""
    statement = build_privacy_statement(
        sample_rate=plan.sample_rate,
        steps=plan.steps_per_epoch * epochs,
        delta=plan.delta,
        schedule=plan.schedule,
        records_per_user=records_per_user,
        max_fft_points=TRAINER_MAX_FFT_POINTS,
    )
    return {**statement.to_dict(), "text": render_privacy_statement(statement)}
