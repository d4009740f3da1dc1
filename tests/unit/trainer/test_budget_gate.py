import json

import httpx
import pytest

from dp_core.errors import InvalidParameterError
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.schedules import NoiseSchedule
from dp_core.trainer.budget_gate import BudgetGate, HttpBudgetGate, LocalBudgetGate, RunPlan
from dp_core.trainer.errors import LedgerError

PLAN = RunPlan(
    sample_rate=0.1,
    steps_per_epoch=10,
    epochs=3,
    schedule=NoiseSchedule(kind="exponential", noise_multiplier=1.2, decay_rate=0.01),
    max_grad_norm=1.5,
    delta=1e-5,
    name="test-run",
)


class FakeLedger:
    """Answers issue 3's contract; ``refuse_from`` makes epochs >= it answer 409."""

    def __init__(self, refuse_from=None, refuse_run=False, fail_first=0):
        self.requests = []
        self.refuse_from = refuse_from
        self.refuse_run = refuse_run
        self.fail_first = fail_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail_first:
            self.fail_first -= 1
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else None
        self.requests.append(
            (request.method, request.url.path, body, request.headers.get("authorization"))
        )
        if request.url.path == "/v1/runs":
            if self.refuse_run:
                return httpx.Response(
                    409,
                    json={"code": "budget_exceeded", "message": "projected 9.1 > remaining 2.0"},
                )
            return httpx.Response(201, json={"id": "run-7", "status": "admitted"})
        if request.url.path.endswith("/epochs"):
            if self.refuse_from is not None and body["epoch"] >= self.refuse_from:
                return httpx.Response(
                    409, json={"code": "budget_exceeded", "message": "no budget left"}
                )
            return httpx.Response(
                200, json={"epoch": body["epoch"], "epsilon_spent": 0.5 * (body["epoch"] + 1)}
            )
        if request.url.path.endswith("/finish"):
            return httpx.Response(200, json={"status": "finished"})
        return httpx.Response(404, json={"code": "not_found", "message": "?"})


def _gate(ledger, **kw):
    client = httpx.Client(base_url="http://ledger", transport=httpx.MockTransport(ledger))
    return HttpBudgetGate(
        base_url="http://ledger",
        token="s3cret",
        dataset="mnist",
        client=client,
        sleep=lambda s: None,
        **kw,
    )


def test_both_gates_satisfy_the_protocol():
    assert isinstance(_gate(FakeLedger()), BudgetGate)
    assert isinstance(LocalBudgetGate(target_epsilon=1.0, delta=1e-5), BudgetGate)


def test_http_gate_asks_for_pay_as_you_go_runs_and_checks_the_mode():
    ledger = FakeLedger()
    assert _gate(ledger, reservation="epoch").open(PLAN).allowed
    assert ledger.requests[0][2]["reservation"] == "epoch"
    with pytest.raises(InvalidParameterError, match="reservation"):
        _gate(ledger, reservation="sometimes")


def test_plan_mechanism_per_epoch_uses_global_steps():
    assert PLAN.epoch_mechanism(2) == SampledGaussianSchedule(
        sample_rate=0.1, schedule=PLAN.schedule, steps=10, start_step=20
    )
    assert RunPlan.from_dict(PLAN.to_dict()) == PLAN


def test_http_gate_registers_the_exact_mechanism_charges_and_finishes():
    ledger = FakeLedger()
    gate = _gate(ledger)
    assert gate.open(PLAN).allowed
    decision = gate.before_epoch(0)
    assert decision.allowed and decision.epsilon_spent == 0.5
    gate.finish()
    (m1, p1, b1, a1), (m2, p2, b2, _), (m3, p3, _, _) = ledger.requests
    assert (m1, p1, a1) == ("POST", "/v1/runs", "Bearer s3cret")
    assert b1 == {
        "dataset": "mnist",
        "name": "test-run",
        "sample_rate": 0.1,
        "steps_per_epoch": 10,
        "epochs": 3,
        "noise": {"schedule": "exponential", "noise_multiplier": 1.2, "decay_rate": 0.01},
        "max_grad_norm": 1.5,
        "reservation": "plan",
    }
    assert (p2, b2) == ("/v1/runs/run-7/epochs", {"epoch": 0})
    assert p3 == "/v1/runs/run-7/finish"
    assert gate.state_dict() == {"kind": "http", "run_id": "run-7", "epochs_charged": 1}


def test_http_gate_reports_refusals():
    assert not _gate(FakeLedger(refuse_run=True)).open(PLAN).allowed
    gate = _gate(FakeLedger(refuse_from=1))
    gate.open(PLAN)
    assert gate.before_epoch(0).allowed
    refused = gate.before_epoch(1)
    assert (
        not refused.allowed
        and "budget_exceeded" in refused.reason
        and "no budget left" in refused.reason
    )


def test_http_gate_retries_network_errors_with_backoff():
    sleeps = []
    ledger = FakeLedger(fail_first=2)
    client = httpx.Client(base_url="http://ledger", transport=httpx.MockTransport(ledger))
    gate = HttpBudgetGate(
        base_url="x",
        token="t",
        dataset="d",
        client=client,
        sleep=sleeps.append,
        backoff_seconds=0.1,
    )
    assert gate.open(PLAN).allowed
    assert sleeps == [0.1, 0.2]


def test_http_gate_gives_up_after_max_retries():
    gate = _gate(FakeLedger(fail_first=10), max_retries=2)
    with pytest.raises(LedgerError, match="unreachable"):
        gate.open(PLAN)


def test_http_gate_raises_on_auth_errors():
    client = httpx.Client(
        base_url="http://ledger",
        transport=httpx.MockTransport(
            lambda r: httpx.Response(401, json={"code": "unauthorized", "message": "bad token"})
        ),
    )
    gate = HttpBudgetGate(base_url="x", token="t", dataset="d", client=client, sleep=lambda s: None)
    with pytest.raises(LedgerError, match="401 unauthorized: bad token") as info:
        gate.open(PLAN)
    assert info.value.status == 401 and info.value.service_code == "unauthorized"


def test_resumed_http_gate_does_not_register_again():
    ledger = FakeLedger()
    gate = _gate(ledger)
    gate.load_state_dict({"kind": "http", "run_id": "run-7", "epochs_charged": 2})
    assert gate.open(PLAN).allowed
    assert ledger.requests == []


def test_explicit_schedules_cannot_be_sent_to_the_service():
    plan = RunPlan(
        sample_rate=0.5,
        steps_per_epoch=2,
        epochs=1,
        schedule=NoiseSchedule(kind="explicit", values=(1.0, 2.0)),
        max_grad_norm=1.0,
        delta=1e-5,
    )
    with pytest.raises(InvalidParameterError):
        _gate(FakeLedger()).open(plan)
