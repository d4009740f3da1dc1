"""`dpledger train --tune`: one job registered before any candidate trains, its cost reported."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from dp_core.mechanisms import SampledGaussianSchedule, Tuning
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.cli import register
from dp_core.trainer.recipe import TrainConfig
from dp_core.trainer.tuning import (
    LocalTuningLedger,
    TuneConfig,
    TuningPlan,
    TuningRefused,
    draw_repetitions,
    run_tuning,
)

GRID = TuneConfig(lrs=(1.0, 2.0), noise_multipliers=(1.5, 3.0), gamma=0.5)


def _plan(tune: TuneConfig = GRID) -> TuningPlan:
    return TuningPlan(
        sample_rate=0.1, steps_per_epoch=10, epochs=2, schedule="constant", decay_rate=0.0,
        max_grad_norm=1.0, delta=1e-5, name="tune", tune=tune,
    )  # fmt: skip


class Spy:
    """A `train_one` that records what it was asked to train."""

    def __init__(self) -> None:
        self.calls: list[TrainConfig] = []

    def __call__(self, config: TrainConfig) -> dict:
        self.calls.append(config)
        return {"test_accuracy": config.lr / 10 - config.noise_multiplier / 100, "epsilon": 1.0}


def test_a_job_over_the_local_budget_is_refused_before_any_candidate_trains():
    spy = Spy()
    epsilon, _ = _plan().epsilon()
    with pytest.raises(TuningRefused, match="exceeds the local budget"):
        run_tuning(TrainConfig(), GRID, _plan(), ledger=LocalTuningLedger(
            budget_epsilon=epsilon * 0.99), train_one=spy)  # fmt: skip
    assert spy.calls == []


def test_the_job_trains_k_random_candidates_and_reports_the_best_with_the_tuning_cost():
    spy = Spy()
    plan = _plan()
    epsilon, _ = plan.epsilon()
    summary = run_tuning(TrainConfig(seed=3), GRID, plan,
                         ledger=LocalTuningLedger(budget_epsilon=epsilon), train_one=spy)  # fmt: skip
    tuning = summary["tuning"]
    assert tuning["repetitions"] == len(spy.calls) == len(tuning["trained"]) >= 1
    assert all((c.lr, c.noise_multiplier) in GRID.candidates() for c in spy.calls)
    assert all(c.service is None and c.budget_epsilon is None for c in spy.calls)
    best = max(tuning["trained"], key=lambda c: c["test_accuracy"])
    assert summary["selected"] == {"lr": best["lr"], "noise_multiplier": best["noise_multiplier"]}
    assert summary["epsilon"] == tuning["epsilon"] == epsilon > tuning["epsilon_single_run"]


def test_the_jobs_rdp_is_dp_cores_tuning_bound_over_the_noisiest_spending_candidate():
    plan = _plan()
    base = SampledGaussianSchedule(
        sample_rate=0.1, schedule=NoiseSchedule(kind="constant", noise_multiplier=1.5), steps=20
    )
    expected = Tuning(base=base, distribution="negative_binomial", eta=1.0, gamma=0.5)
    orders = np.array([2.0, 8.0, 32.0])
    assert np.array_equal(compute_rdp(plan.mechanism(), orders), compute_rdp(expected, orders))


@pytest.mark.parametrize(
    "tune",
    [GRID, TuneConfig(lrs=(1.0,), noise_multipliers=(1.0,), eta=0.0, gamma=0.1),
     TuneConfig(lrs=(1.0,), noise_multipliers=(1.0,), distribution="poisson", mu=3.0)],
)  # fmt: skip
def test_repetitions_follow_the_distribution(tune):
    rng = np.random.default_rng(0)
    draws = np.array([draw_repetitions(tune, rng) for _ in range(20_000)])
    expected = _plan(tune).mechanism().expected_runs
    assert draws.mean() == pytest.approx(expected, rel=0.05)
    if tune.distribution != "poisson":
        assert draws.min() >= 1  # truncated: at least one run


def _app():
    app = typer.Typer()

    @app.callback()
    def root():
        pass

    register(app)
    return app


def test_cli_refusal_exits_3_and_trains_nothing():
    result = CliRunner().invoke(_app(), [
        "train", "--tune", "--epochs", "1", "--noise-multiplier", "1.0", "--budget-epsilon",
        "0.1", "--threads", "1",
    ])  # fmt: skip
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["candidates_trained"] == 0 and summary["epsilon_planned"] > 0.1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "exceeds the local budget" in lines[0]


@pytest.mark.slow
def test_cli_tunes_digits_and_reports_the_selected_candidate():
    result = CliRunner().invoke(_app(), [
        "train", "--tune", "--epochs", "1", "--noise-multiplier", "1.0", "--lr", "2",
        "--tune-noise", "1.0,2.0", "--tune-gamma", "0.6", "--budget-epsilon", "50",
        "--threads", "1", "--seed", "1",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    tuning = summary["tuning"]
    assert len(tuning["trained"]) == tuning["repetitions"] >= 1
    assert summary["selected"]["noise_multiplier"] in (1.0, 2.0)
    assert summary["test_accuracy"] == max(c["test_accuracy"] for c in tuning["trained"])
    assert math.isclose(summary["epsilon"], tuning["epsilon"]) and summary["epsilon"] < 50
    assert summary["epsilon_rdp"] == summary["epsilon"] and summary["epsilon_pld"] is None
    assert "statement" not in summary  # a single candidate's statement would understate the job
