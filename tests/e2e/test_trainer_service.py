"""The trainer's HTTP budget gate against the real service (uvicorn subprocess, SQLite)."""

import httpx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from dp_core.trainer.budget_gate import HttpBudgetGate
from dp_core.trainer.loop import DPTrainer
from tests.integration.conftest import ADMIN_TOKEN as ADMIN
from tests.integration.server import Server


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger")
    server = Server(f"sqlite:///{tmp / 'ledger.db'}", tmp / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            yield client
    finally:
        server.stop()


def _dataset_and_token(client, name, target_epsilon):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = client.post(
        "/v1/datasets",
        json={"name": name, "target_epsilon": target_epsilon, "target_delta": 1e-5},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/v1/tokens", json={"name": "trainer", "role": "trainer", "datasets": [name]}, headers=admin
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def _trainer(client, token, name, epochs, tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 5, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    gate = HttpBudgetGate(base_url=str(client.base_url), token=token, dataset=name, client=client)
    return DPTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), TensorDataset(x, y), loss_fn=F.cross_entropy,
        max_grad_norm=1.0, epochs=epochs, expected_batch_size=50, noise_multiplier=1.0, gate=gate, seed=0,
        checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip


def test_admitted_run_charges_every_epoch_and_finishes(service, tmp_path):
    token = _dataset_and_token(service, "blobs-ok", target_epsilon=8.0)
    trainer = _trainer(service, token, "blobs-ok", epochs=3, tmp_path=tmp_path)
    result = trainer.fit()
    assert result.stop_reason == "completed" and result.epochs_completed == 3
    run = service.get(
        f"/v1/runs/{trainer.gate.run_id}", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert run["epochs_charged"] == 3 and run["status"] == "finished"
    assert (
        run["steps_per_epoch"] == trainer.plan.steps_per_epoch
        and run["sample_rate"] == trainer.plan.sample_rate
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
