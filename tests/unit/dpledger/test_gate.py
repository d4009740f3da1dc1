"""`dpledger.gate.HttpBudgetGate` through `LedgerClient` against the real app (SQLite in tmp_path)."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import torch
import torch.nn.functional as F
import typer
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from dp_core.conversion import rdp_to_epsilon
from dp_core.errors import InvalidParameterError
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.budget_gate import BudgetGate, RunPlan
from dp_core.trainer.cli import register
from dp_core.trainer.errors import LedgerError as TrainerLedgerError
from dp_core.trainer.loop import make_private
from dpledger.client import LedgerClient, RetryPolicy
from dpledger.gate import HttpBudgetGate, plan_mechanism

from .app_client import running_app

PLAN = RunPlan(
    sample_rate=0.1, steps_per_epoch=10, epochs=3, schedule=NoiseSchedule(kind="exponential", noise_multiplier=1.2, decay_rate=0.01),
    max_grad_norm=1.5, delta=1e-5, name="test-run",
)  # fmt: skip


@pytest.fixture
def ledger(tmp_path):
    with running_app(tmp_path) as running:
        yield running


def _gate(ledger, token=None, **kwargs):
    client = ledger.client(token) if token else ledger.client()
    return HttpBudgetGate(dataset="mnist", client=client, **kwargs)


def _dataset(ledger, epsilon=8.0, name="mnist"):
    with ledger.client() as admin:
        admin.create_dataset(name=name, target_epsilon=epsilon, target_delta=1e-5)
    return ledger.trainer_token(name)


def test_the_gate_satisfies_the_protocol(ledger):
    assert isinstance(_gate(ledger), BudgetGate)
    with pytest.raises(InvalidParameterError, match="reservation"):
        _gate(ledger, reservation="sometimes")


def test_the_gate_registers_the_exact_mechanism_charges_and_finishes(ledger):
    token = _dataset(ledger)
    gate = _gate(ledger, token, reservation="epoch")
    assert gate.open(PLAN).allowed
    charged = gate.before_epoch(0)
    assert charged.allowed and gate.before_epoch(0) == charged  # idempotent
    with ledger.client(token) as client:
        assert charged.epsilon_spent == client.get_run(gate.run_id).epsilon_run > 0
        orders = client.get_dataset("mnist").orders
    # The run's own epsilon: epoch 0 alone, on the dataset's orders (up to the ledger's margin).
    rdp = compute_rdp(PLAN.epoch_mechanism(0), orders)
    own = rdp_to_epsilon(orders=orders, rdp=rdp, delta=1e-5, warn=False).epsilon
    assert own <= charged.epsilon_spent <= own * (1 + 2e-6)
    gate.finish()
    with ledger.client(token) as client:
        run = client.get_run(gate.run_id)
        charges = [e for e in client.list_ledger("mnist").items if e.kind == "charge"]
    assert (run.sample_rate, run.steps_per_epoch, run.epochs, run.max_grad_norm) == (
        0.1,
        10,
        3,
        1.5,
    )
    assert run.noise is not None and run.noise.model_dump() == {
        "schedule": "exponential", "noise_multiplier": 1.2, "decay_rate": 0.01,
    }  # fmt: skip
    assert (run.name, run.reservation, run.status, run.epochs_charged) == (
        "test-run", "epoch", "finished", 1,
    )  # fmt: skip
    assert len(charges) == 1
    assert gate.state_dict() == {"kind": "http", "run_id": run.id, "epochs_charged": 1}


def test_refusals_are_decisions_with_the_services_reason(ledger):
    token = _dataset(ledger, epsilon=8.0)
    big = dataclasses.replace(
        PLAN, epochs=200, schedule=NoiseSchedule(kind="constant", noise_multiplier=1.2)
    )
    refused = _gate(ledger, token).open(big)
    assert not refused.allowed and refused.reason.startswith("budget_exceeded: ")
    assert "epsilon would reach" in refused.reason
    assert "epochs would fit, or noise_multiplier " in refused.reason  # the service's what-fits
    assert refused.reason.count("would fit all epochs") == 1  # said once, not repeated after it


def test_other_failures_raise_the_trainers_ledger_error(ledger):
    _dataset(ledger)
    with pytest.raises(TrainerLedgerError, match="401 unauthorized") as info:
        _gate(ledger, "dpl_wrong").open(PLAN)
    assert (info.value.status, info.value.service_code) == (401, "unauthorized")
    gate = _gate(ledger)
    gate.open(PLAN)
    with pytest.raises(TrainerLedgerError, match="epoch_out_of_order") as info:
        gate.before_epoch(2)
    assert info.value.status == 409
    unreachable = HttpBudgetGate(
        dataset="d", client=LedgerClient("http://127.0.0.1:9", retry=RetryPolicy(max_attempts=1))
    )
    with pytest.raises(TrainerLedgerError, match="unreachable") as info:
        unreachable.open(PLAN)
    assert info.value.status is None


def test_charges_are_retried_through_a_dropped_connection(ledger):
    token = _dataset(ledger)
    dropped = []

    class DropFirstCharge(httpx.BaseTransport):
        def handle_request(self, request):
            if request.url.path.endswith("/epochs") and not dropped:
                dropped.append(request)
                raise httpx.ConnectError("connection refused")
            return ledger.transport.handle_request(request)

    client = LedgerClient(
        "http://dpledger.test", token=token, transport=DropFirstCharge(), sleep=lambda s: None
    )
    gate = HttpBudgetGate(dataset="mnist", client=client)
    assert gate.open(PLAN).allowed and gate.before_epoch(0).allowed
    assert len(dropped) == 1 and client.get_run(gate.run_id).epochs_charged == 1


def test_a_resumed_gate_does_not_register_again(ledger):
    _dataset(ledger)
    gate = _gate(ledger)
    gate.open(PLAN)
    resumed = _gate(ledger)
    resumed.load_state_dict({"kind": "http", "run_id": str(gate.run_id), "epochs_charged": 0})
    assert resumed.open(PLAN).allowed and resumed.run_id == gate.run_id
    with ledger.client() as admin:
        assert len(admin.get_budget("mnist").runs) == 1


def test_explicit_schedules_cannot_be_sent_to_the_service():
    plan = dataclasses.replace(
        PLAN, sample_rate=0.5, steps_per_epoch=2, epochs=1,
        schedule=NoiseSchedule(kind="explicit", values=(1.0, 2.0)),
    )  # fmt: skip
    with pytest.raises(InvalidParameterError, match="parametric"):
        plan_mechanism(plan)


# --- the training loop with the gate ------------------------------------------------------------


def _trainer(gate, **kw):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=gen)
    x = torch.randn(400, 5, generator=gen) + 2.0 * (2 * y[:, None].float() - 1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    settings = {"loss_fn": F.cross_entropy, "max_grad_norm": 1.0, "epochs": 3,
                "expected_batch_size": 50, "noise_multiplier": 0.8, "noise_seed": 1, **kw}  # fmt: skip
    return make_private(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        dataset=TensorDataset(x, y), gate=gate, **settings,
    )  # fmt: skip


def _projected(ledger, plan, epochs):
    """The filter epsilon of the plan's first ``epochs`` epochs, asked of a roomy dataset."""
    mechanism = dataclasses.replace(plan_mechanism(plan), epochs=epochs)
    with ledger.client() as admin:
        return admin.preview_run(dataset="probe", name="p", mechanism=mechanism).epsilon_projected


def test_a_refused_epoch_stops_the_loop_cleanly_with_a_checkpoint(ledger, tmp_path):
    with ledger.client() as admin:
        admin.create_dataset(name="probe", target_epsilon=1000.0, target_delta=1e-5)
    probe = _trainer(None, epochs=5)
    target = 0.5 * (_projected(ledger, probe.plan, 2) + _projected(ledger, probe.plan, 3))
    token = _dataset(ledger, epsilon=target)
    gate = _gate(ledger, token, reservation="epoch")
    trainer = _trainer(gate, epochs=5, checkpoint_dir=tmp_path)
    result = trainer.fit()
    assert result.epochs_completed == 2
    assert result.stop_reason.startswith("refused: budget_exceeded: ")
    assert (tmp_path / "checkpoint.pt").exists()
    with ledger.client(token) as client:
        run = client.get_run(gate.run_id)
        budget = client.get_budget("mnist")
    assert (run.status, run.epochs_charged) == ("finished", 2)
    assert budget.epsilon_spent <= target


def test_a_plan_refused_up_front_trains_nothing(ledger):
    token = _dataset(ledger, epsilon=0.3)
    trainer = _trainer(_gate(ledger, token), epochs=30)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert result.epochs_completed == 0 and result.stop_reason.startswith(
        "refused: budget_exceeded"
    )
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters(), strict=True))


def test_a_resumed_run_reuses_its_run_and_pays_each_epoch_once(ledger, tmp_path):
    token = _dataset(ledger, epsilon=50.0)
    first = _trainer(_gate(ledger, token), checkpoint_dir=tmp_path)
    for n, batches in enumerate(first.epochs()):
        if n == 1:
            break  # dies right after epoch 1 was charged
        for batch in batches:
            first.step(batch)
    second = _trainer(_gate(ledger, token), checkpoint_dir=tmp_path)
    assert second.resume()
    assert second.fit().epochs_completed == 3
    with ledger.client(token) as client:
        entries = client.list_ledger("mnist").items
        budget = client.get_budget("mnist")
    assert len(budget.runs) == 1 and budget.runs[0].status == "finished"
    assert [e.epoch for e in entries if e.kind == "charge"] == [0, 1, 2]


def test_train_service_needs_dpledgers_root_command_to_build_its_gate():
    bare = typer.Typer()

    @bare.callback()
    def root():
        pass

    register(bare)  # dp_core's train command alone: it cannot build an HTTP gate
    args = ["train", "--no-progress", "--epochs", "1", "--noise-multiplier", "1", "--threads", "1",
            "--service", "http://127.0.0.1:9", "--token", "t", "--dataset", "d"]  # fmt: skip
    result = CliRunner().invoke(bare, args)
    assert result.exit_code == 2 and "needs a ledger gate" in result.stderr
    # `dpledger train --service` itself: tests/e2e/test_trainer_service.py (a real server).


def test_plan_mechanism_carries_the_group_size():
    schedule = NoiseSchedule(kind="constant", noise_multiplier=1.0)
    base = RunPlan(sample_rate=0.01, steps_per_epoch=100, epochs=2, schedule=schedule,
                   max_grad_norm=1.0, delta=1e-5)  # fmt: skip
    assert "max_records_per_individual" not in plan_mechanism(base).to_json()  # older services
    grouped = dataclasses.replace(base, group_size=3)
    assert plan_mechanism(grouped).to_json()["max_records_per_individual"] == 3
    assert RunPlan.from_dict(grouped.to_dict()) == grouped
    old_checkpoint = {k: v for k, v in base.to_dict().items() if k != "group_size"}
    assert RunPlan.from_dict(old_checkpoint) == base
    with pytest.raises(InvalidParameterError, match="records_per_user"):
        dataclasses.replace(base, group_size=0)
