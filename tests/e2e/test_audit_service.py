"""Issue 15 against the real service (uvicorn subprocess, SQLite): charged audits, group privacy,
data guards that write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp_core.rdp.orders import DEFAULT_ORDERS
from dp_core.trainer.guards import DuplicateRecordsError, ResampledDataError, group_epsilon
from dp_core.trainer.loop import DPTrainer
from dpledger.cli import cli
from dpledger.client import LedgerClient
from dpledger.gate import HttpBudgetGate
from tests.integration.conftest import ADMIN_TOKEN as ADMIN
from tests.integration.server import Server


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")
    server = Server(f"sqlite:///{tmp / 'ledger.db'}", tmp / "server.log").start()
    try:
        with LedgerClient(server.url, token=ADMIN) as admin:
            yield admin
    finally:
        server.stop()


def _dataset_and_token(admin, name, target_epsilon, **extra):
    admin.create_dataset(name=name, target_epsilon=target_epsilon, target_delta=1e-5, **extra)
    return admin.create_token(name="trainer", role="trainer", datasets=[name]).token


def _audit_cli(service, token, dataset, *extra):
    args = ["audit", "--epochs", "1", "--canaries", "16", "--noise-multiplier", "1.0", "--json",
            "--service", service.base_url, "--token", token, "--dataset", dataset, *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def test_audit_run_is_charged_and_its_result_stored(service):
    token = _dataset_and_token(service, "audit-ok", target_epsilon=50.0)
    result = _audit_cli(service, token, "audit-ok")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    run = service.get_run(summary["run_id"])
    assert (run.name, run.status, run.epochs_charged, run.epochs) == (
        "dpledger-audit", "finished", 1, 1,
    )  # fmt: skip
    # The ledger's epsilon of the audit run bounds the trainer's (coarser orders: never below).
    assert run.epsilon_run is not None
    assert run.epsilon_run >= summary["epsilon_theoretical"] * (1 - 1e-9)
    assert run.epsilon_run == pytest.approx(summary["epsilon_theoretical"], rel=0.2)
    (audit,) = service.list_audits(run.id).items
    assert audit.id == summary["audit_id"]
    assert (audit.epsilon_lower_bound, audit.canaries, audit.seed) == (
        summary["epsilon_lower_bound"], 16, 0,
    )  # fmt: skip
    assert audit.actor == "trainer:trainer"
    assert audit.membership_inference is not None
    assert audit.membership_inference["auc"] == summary["membership_inference"]["auc"]


def test_refused_audit_exits_3_and_stores_nothing(service):
    token = _dataset_and_token(service, "audit-small", target_epsilon=0.3)
    result = _audit_cli(service, token, "audit-small")
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0] and "budget_exceeded" in lines[0]
    assert result.stdout == ""
    budget = service.get_budget("audit-small")
    assert budget.epsilon_spent in (None, 0.0)
    for run in budget.runs:
        assert service.list_audits(run.id).total == 0


@pytest.mark.parametrize(
    ("extra", "word"),
    [(["--non-private"], "non_private"), (["--token", ""], "--token")],
)
def test_audit_service_bad_input_exits_2(service, extra, word):
    token = _dataset_and_token(service, f"audit-bad-{len(extra[0])}", target_epsilon=50.0)
    args = ["audit", "--epochs", "1", "--canaries", "8", "--service", service.base_url,
            "--token", token, "--dataset", f"audit-bad-{len(extra[0])}", *extra]  # fmt: skip
    if "--non-private" in extra:
        args = [a for a in args if a != "--noise-multiplier"]
    else:
        args += ["--noise-multiplier", "1.0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert word in result.stderr
    assert service.get_budget(f"audit-bad-{len(extra[0])}").runs == []


# --- data guards write nothing; K is charged ------------------------------------------------------


def _blobs(n=200, *, duplicate=0):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 5, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    if duplicate:
        x[1 : duplicate + 1] = x[0]
        y[1 : duplicate + 1] = y[0]
    return TensorDataset(x, y)


def _trainer(service, token, dataset, data, **extra):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    gate = HttpBudgetGate(base_url=service.base_url, token=token, dataset=dataset)
    return DPTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), data, loss_fn=F.cross_entropy,
        max_grad_norm=1.0, epochs=2, expected_batch_size=20, noise_multiplier=1.0, gate=gate,
        **extra,
    )  # fmt: skip


def test_duplicates_and_resampled_data_register_nothing(service):
    token = _dataset_and_token(service, "guards", target_epsilon=50.0)
    with pytest.raises(DuplicateRecordsError):
        _trainer(service, token, "guards", _blobs(duplicate=1)).fit()
    smote = _blobs()
    smote.oversampled = True  # type: ignore[attr-defined]
    with pytest.raises(ResampledDataError, match="SMOTE"):
        _trainer(service, token, "guards", smote).fit()
    assert service.get_budget("guards").runs == []
    assert service.list_ledger("guards").total == 0


def test_declared_group_is_charged_and_matches_the_trainers_epsilon(service):
    # The dataset's orders are the trainer's group orders (DEFAULT_ORDERS / 2^c, c = 1 for K = 2),
    # so both epsilons come from the same curve: they agree up to the ledger's rounding margin.
    group_orders = [float(a) / 2 for a in DEFAULT_ORDERS if a >= 4.0]
    token = _dataset_and_token(service, "grouped", target_epsilon=200.0, orders=group_orders)
    trainer = _trainer(service, token, "grouped", _blobs(duplicate=1), max_records_per_individual=2)
    result = trainer.fit()
    assert result.stop_reason == "completed"
    run = service.get_run(trainer.gate.run_id)
    assert run.max_records_per_individual == 2 and run.epochs_charged == 2
    ours = group_epsilon(trainer.plan.mechanism(0, 2), delta=1e-5, group_size=2)
    assert run.epsilon_run is not None
    assert run.epsilon_run >= ours
    assert run.epsilon_run == pytest.approx(ours, rel=1e-5)
    # and it is far above the per-record epsilon the trainer reports for the same run
    assert run.epsilon_run > 2 * result.epsilon
    assert np.isfinite(run.epsilon_run)


def test_dpledger_train_sends_k_and_reports_the_ledgers_epsilon(service, tmp_path):
    from tests.unit.trainer.test_guards import _write_mnist_with_copies

    _write_mnist_with_copies(tmp_path, [(0, 1), (0, 2)])  # up to 3 copies: K = 3, charged as 4
    group_orders = [float(a) / 4 for a in DEFAULT_ORDERS if a >= 8.0]
    token = _dataset_and_token(service, "grouped-cli", target_epsilon=500.0, orders=group_orders)
    args = ["train", "--no-progress", "--threads", "1", "--data", f"mnist:{tmp_path}",
            "--epochs", "1", "--batch-size", "16", "--noise-multiplier", "2",
            "--max-records-per-individual", "3", "--service", service.base_url,
            "--token", token, "--dataset", "grouped-cli"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (budget_run,) = service.get_budget("grouped-cli").runs
    run = service.get_run(budget_run.id)
    assert run.max_records_per_individual == 3
    assert run.epsilon_run == pytest.approx(summary["epsilon"], rel=1e-5)
    assert run.epsilon_run >= summary["epsilon"]
    assert summary["epsilon"] > summary["epsilon_per_record"]
