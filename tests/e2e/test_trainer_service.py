"""The trainer's HTTP budget gate against the real service (uvicorn subprocess, SQLite)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp_core.rdp.compose import compute_rdp
from dp_core.trainer.loop import DPTrainer
from dpledger.cli import cli
from dpledger.client import BudgetExceeded, DpSgd, LedgerClient
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


def _dataset_and_token(admin, name, target_epsilon):
    admin.create_dataset(name=name, target_epsilon=target_epsilon, target_delta=1e-5)
    return admin.create_token(name="trainer", role="trainer", datasets=[name]).token


def _trainer(client, token, name, epochs, tmp_path, *, noise_multiplier=1.0, gate=None):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 5, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    gate = gate or HttpBudgetGate(base_url=client.base_url, token=token, dataset=name)
    return DPTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), TensorDataset(x, y), loss_fn=F.cross_entropy,
        max_grad_norm=1.0, epochs=epochs, expected_batch_size=50, noise_multiplier=noise_multiplier, gate=gate,
        checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip


def test_admitted_run_charges_every_epoch_and_finishes(service, tmp_path):
    token = _dataset_and_token(service, "blobs-ok", target_epsilon=8.0)
    trainer = _trainer(service, token, "blobs-ok", epochs=3, tmp_path=tmp_path)
    result = trainer.fit()
    assert result.stop_reason == "completed" and result.epochs_completed == 3
    run = service.get_run(trainer.gate.run_id)
    assert run.epochs_charged == 3 and run.status == "finished"
    assert (run.steps_per_epoch, run.sample_rate) == (
        trainer.plan.steps_per_epoch,
        trainer.plan.sample_rate,
    )


def test_plan_over_budget_is_refused_up_front(service, tmp_path):
    token = _dataset_and_token(service, "blobs-small", target_epsilon=0.5)
    trainer = _trainer(service, token, "blobs-small", epochs=50, tmp_path=tmp_path)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert result.epochs_completed == 0 and result.stop_reason.startswith(
        "refused: budget_exceeded"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()


class _SecondRunArrives(HttpBudgetGate):
    """A gate that lets another client reserve a run just before epoch ``at`` is charged."""

    def __init__(self, *, at, second_run, admin, **kwargs):
        super().__init__(**kwargs)
        self.at, self.second_run, self.admin = at, second_run, admin
        self.budget_after_second = None

    def before_epoch(self, epoch):
        if epoch == self.at and self.budget_after_second is None:
            self.admin.create_run(
                dataset=self.dataset, name="other-team", mechanism=self.second_run
            )
            self.budget_after_second = self.admin.get_budget(self.dataset)
        return super().before_epoch(epoch)


def _predicted_stop(budget, plan, first_epoch):
    """Replay the filter rule on the ledger's per-order headroom: the first epoch that won't fit."""
    orders = [row.order for row in budget.orders]
    headroom = np.array([row.headroom for row in budget.orders])
    alive = np.array([row.alive for row in budget.orders])
    spent = np.zeros_like(headroom)
    for epoch in range(first_epoch, plan.epochs):
        x = np.asarray(compute_rdp(plan.epoch_mechanism(epoch), np.asarray(orders)))
        fits = alive & (spent + x <= headroom)
        if not fits.any():
            return epoch
        spent += x
        alive &= spent <= headroom
    return plan.epochs


def test_a_concurrent_reservation_stops_a_pay_as_you_go_run_where_the_ledger_predicts(
    service, tmp_path
):
    token = _dataset_and_token(service, "blobs-shared", target_epsilon=4.0)
    second = DpSgd(sample_rate=0.125, steps_per_epoch=8, epochs=8, noise_multiplier=2.0)
    gate = _SecondRunArrives(
        at=3, second_run=second, admin=service, reservation="epoch",
        base_url=service.base_url, token=token, dataset="blobs-shared",
    )  # fmt: skip
    trainer = _trainer(
        service,
        token,
        "blobs-shared",
        epochs=10,
        tmp_path=tmp_path,
        noise_multiplier=2.0,
        gate=gate,
    )
    result = trainer.fit()

    assert gate.budget_after_second is not None
    expected = _predicted_stop(gate.budget_after_second, trainer.plan, first_epoch=3)
    assert 3 < expected < 10, "the scenario must cut the run strictly inside its plan"
    assert result.epochs_completed == expected
    assert result.stop_reason.startswith("refused: budget_exceeded")
    run = service.get_run(gate.run_id)
    assert (run.epochs_charged, run.status, run.reservation) == (
        expected,
        "finished",
        "epoch",
    )
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()


def _train_cli(service, token, dataset, *extra):
    args = ["train", "--no-progress", "--epochs", "2", "--noise-multiplier", "1.0",
            "--threads", "1", "--service", service.base_url, "--token", token,
            "--dataset", dataset, *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def test_dpledger_train_charges_the_service_through_the_client(service):
    token = _dataset_and_token(service, "digits-cli", target_epsilon=50.0)
    result = _train_cli(service, token, "digits-cli")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["epochs_completed"], summary["stop_reason"]) == (2, "completed")
    (run,) = service.get_budget("digits-cli").runs
    assert (run.status, run.epochs_charged) == ("finished", 2)


def test_dpledger_train_reports_a_wrong_token_as_an_error(service):
    _dataset_and_token(service, "digits-bad-token", target_epsilon=50.0)
    result = _train_cli(service, "dpl_wrong", "digits-bad-token")
    assert result.exit_code != 0
    assert "401 unauthorized" in result.stderr
    with pytest.raises(BudgetExceeded):  # nothing was registered: a big plan is still refused
        service.create_run(
            dataset="digits-bad-token", name="x",
            mechanism=DpSgd(sample_rate=0.5, epochs=1000, noise_multiplier=0.5),
        )  # fmt: skip


def test_per_class_sampling_rates_are_charged_at_the_largest_rate(service):
    token = _dataset_and_token(service, "digits-classes", target_epsilon=50.0)
    rates = ",".join(f"{c}:{0.3 if c == 7 else 0.05}" for c in range(10))
    result = _train_cli(service, token, "digits-classes", "--class-sample-rates", rates)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    (entry,) = service.get_budget("digits-classes").runs
    run = service.get_run(entry.id)
    assert (run.status, run.epochs_charged) == ("finished", 2)
    assert (run.sample_rate, run.steps_per_epoch) == (0.3, summary["steps_per_epoch"])
    # The ledger's own conversion (its order grid, rounded toward privacy) is at least the run's.
    assert entry.epsilon_run >= summary["epsilon_rdp"] > sorted(summary["epsilon_per_class"])[-2]
    assert summary["class_sample_rates"]["limiting_classes"] == [7]
    assert max(summary["epsilon_per_class"]) == summary["epsilon_per_class"][7]
