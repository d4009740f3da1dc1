"""`train --tune --service`: the job is ONE `tuning` run, charged before any candidate trains."""

from __future__ import annotations

import pytest

from dp_core.trainer.recipe import TrainConfig
from dp_core.trainer.tuning import TuneConfig, TuningPlan, TuningRefused, run_tuning
from dpledger.gate import HttpTuningLedger

from .app_client import running_app

GRID = TuneConfig(lrs=(1.0, 2.0), noise_multipliers=(1.5, 3.0), gamma=0.5)
PLAN = TuningPlan(
    sample_rate=0.01, steps_per_epoch=100, epochs=2, schedule="constant", decay_rate=0.0,
    max_grad_norm=1.0, delta=1e-5, name="tune", tune=GRID,
)  # fmt: skip


@pytest.fixture
def ledger(tmp_path):
    with running_app(tmp_path) as running:
        yield running


def _train_one(trained):
    def train(config: TrainConfig) -> dict:
        trained.append(config)
        return {"test_accuracy": 0.5, "epsilon": 1.0}

    return train


def test_a_job_that_does_not_fit_is_refused_before_any_candidate_trains(ledger):
    trained: list[TrainConfig] = []
    with ledger.client() as admin:
        admin.create_dataset(name="mnist", target_epsilon=1.0, target_delta=1e-5)
        tuning = HttpTuningLedger(base_url="unused", token=None, dataset="mnist", client=admin)
        with pytest.raises(TuningRefused, match="budget_exceeded"):
            run_tuning(TrainConfig(), GRID, PLAN, ledger=tuning, train_one=_train_one(trained))
        assert trained == []
        budget = admin.get_budget("mnist")
    assert budget.epsilon_spent == 0.0 and budget.epsilon_reserved == 0.0
    assert [run.status for run in budget.runs] == ["refused"]


def test_the_job_is_charged_once_then_candidates_train(ledger):
    trained: list[TrainConfig] = []
    with ledger.client() as admin:
        admin.create_dataset(name="mnist", target_epsilon=8.0, target_delta=1e-5)
        tuning = HttpTuningLedger(base_url="unused", token=None, dataset="mnist", client=admin)
        summary = run_tuning(
            TrainConfig(seed=2), GRID, PLAN, ledger=tuning, train_one=_train_one(trained)
        )
        run = admin.get_run(summary["tuning"]["ledger_run_id"])
        entries = admin.list_ledger("mnist").items
    assert len(trained) == summary["tuning"]["repetitions"] >= 1
    assert (run.kind, run.status, run.epochs_charged) == ("tuning", "finished", 1)
    assert [e.kind for e in entries] == ["reservation", "charge"]
    assert entries[1].mechanism["mechanism"]["type"] == "tuning"
    # The ledger's epsilon (12 orders, costs rounded up) bounds the job's refined epsilon.
    assert summary["tuning"]["epsilon_ledger"] == run.epsilon_run >= summary["epsilon"]
