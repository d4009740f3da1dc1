"""`LedgerClient` against the real app (SQLite in tmp_path), its error map, retries and keys."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import BaseModel

import app.schemas
import dpledger.client as client_module
from app.errors import AppError
from dpledger.client import (
    AdmissionPreview,
    ApproxDpRelease,
    BudgetExceeded,
    CalibrationFailed,
    Conflict,
    DatasetExists,
    DpSgd,
    EpochBeyondPlan,
    EpochOutOfOrder,
    Forbidden,
    GaussianRelease,
    InvalidInput,
    LaplaceRelease,
    LedgerClient,
    LedgerError,
    NotFound,
    Pate,
    RetryPolicy,
    RunNotActive,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    Unreachable,
    error_from_response,
    retry_after_seconds,
)

from .app_client import running_app

RUN = DpSgd(sample_rate=0.01, epochs=3, noise_multiplier=1.0, max_grad_norm=1.0)


@pytest.fixture
def ledger(tmp_path):
    with running_app(tmp_path) as running:
        yield running


def _dataset(admin, name="mnist", epsilon=3.0):
    return admin.create_dataset(name=name, target_epsilon=epsilon, target_delta=1e-5)


# --- against the app ----------------------------------------------------------------------------


def test_a_run_lifecycle_through_every_read(ledger):
    with ledger.client() as admin:
        created = _dataset(admin)
        assert (created.name, created.target_epsilon, created.approx_dp.epsilon) == ("mnist", 3, 0)
        assert admin.get_dataset("mnist") == created
        assert admin.list_datasets().items == [created]
        token = ledger.trainer_token("mnist")
    with ledger.client(token) as trainer:
        preview = trainer.preview_run(dataset="mnist", name="r", mechanism=RUN)
        assert isinstance(preview, AdmissionPreview) and preview.admitted
        assert trainer.list_ledger("mnist").total == 0  # the dry run wrote nothing
        run = trainer.create_run(dataset="mnist", name="r", mechanism=RUN)
        assert (run.kind, run.status, run.steps_per_epoch, run.epochs) == (
            "dp_sgd",
            "admitted",
            100,
            3,
        )
        assert run.noise is not None and run.noise.noise_multiplier == 1.0
        first = trainer.charge_epoch(run.id, 0)
        assert trainer.charge_epoch(run.id, 0) == first  # idempotent per (run, epoch)
        second = trainer.charge_epoch(run.id, 1)
        after_two = trainer.get_run(run.id)
        assert after_two.epochs_charged == 2 and after_two.epsilon_run == second.epsilon_run
        assert 0 < first.epsilon_run < second.epsilon_run
        finished = trainer.finish_run(run.id)
        assert (finished.status, finished.epochs_charged) == ("finished", 2)
        budget = trainer.get_budget("mnist")
        entries = trainer.list_ledger("mnist", limit=10)
    assert [(e.kind, e.epoch) for e in entries.items] == [
        ("reservation", None), ("charge", 0), ("charge", 1), ("release", None),
    ]  # fmt: skip
    assert entries.items[1].id == first.ledger_entry_id
    assert budget.runs[0].epochs_charged == 2 and 0 < budget.epsilon_spent < 3.0
    assert preview.epsilon_remaining == pytest.approx(3.0, rel=0.05)


def test_every_mechanism_form_is_admitted(ledger):
    with ledger.client() as admin:
        admin.create_dataset(
            name="d", target_epsilon=10.0, target_delta=1e-5, approx_dp_epsilon=1.0,
            approx_dp_delta=1e-6,
        )  # fmt: skip
        mechanisms = [
            RUN,
            DpSgd(
                sample_rate=0.1,
                epochs=2,
                noise_multiplier=2.0,
                steps_per_epoch=5,
                schedule="exponential",
                decay_rate=0.01,
            ),  # fmt: skip
            Pate(aggregator="gnmax", noise_multiplier=40.0, queries=10, batch_size=4),
            LaplaceRelease(sensitivity=1.0, noise_scale=10.0),
            GaussianRelease(sensitivity=1.0, noise_std=10.0),
            ApproxDpRelease(epsilon=0.5, delta=1e-7),
        ]
        runs = [admin.create_run(dataset="d", name="m", mechanism=m) for m in mechanisms]
        pate = runs[2]
        assert admin.charge_batch(pate.id, 0).batch == 0
        budget = admin.get_budget("d")
    kinds = ["dp_sgd", "dp_sgd", "pate", "laplace_release", "gaussian_release", "approx_dp_release"]
    assert [r.kind for r in runs] == kinds
    assert runs[1].noise is not None and runs[1].noise.schedule == "exponential"
    assert (runs[1].steps_per_epoch, pate.epochs) == (5, 3)
    assert budget.approx_dp.epsilon_spent == pytest.approx(0.5)
    assert {k.kind for k in budget.by_kind} >= {"pate", "approx_dp_release"}


def test_accountant_health_and_tokens(ledger):
    with ledger.client() as admin:
        assert admin.health().status == "ok" and admin.liveness().status == "ok"
        eps = admin.compute_epsilon(sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5)
        sigma = admin.calibrate_noise_multiplier(
            target_epsilon=eps.epsilon, delta=1e-5, sample_rate=0.01, steps=1000
        )
        steps = admin.max_steps(
            target_epsilon=eps.epsilon, delta=1e-5, sample_rate=0.01, noise_multiplier=1.0
        )
        token = admin.create_token(name="v", role="viewer")
    assert eps.steps == 1000 and eps.epsilon > 0
    assert sigma.epsilon <= eps.epsilon and sigma.noise_multiplier == pytest.approx(1.0, rel=0.01)
    assert token.role == "viewer" and token.token.startswith("dpl_")
    assert 1000 <= steps.steps < 1100 and steps.epsilon <= eps.epsilon * (1 + 1e-9)


def test_budget_refusal_carries_the_numbers(ledger):
    with ledger.client() as admin:
        _dataset(admin, epsilon=2.0)
        big = DpSgd(sample_rate=0.01, epochs=50, noise_multiplier=1.0)
        with pytest.raises(BudgetExceeded) as dry:
            admin.preview_run(dataset="mnist", name="big", mechanism=big)
        with pytest.raises(BudgetExceeded) as refused:
            admin.create_run(dataset="mnist", name="big", mechanism=big)
        refused_run = admin.get_run(refused.value.run_id)
    err = refused.value
    assert isinstance(err, Conflict) and (err.status, err.code) == (409, "budget_exceeded")
    assert err.epsilon_projected > 2.0 >= err.epsilon_remaining > 0
    assert dry.value.run_id is None and dry.value.epsilon_projected == err.epsilon_projected
    assert refused_run.status == "refused"
    # What would fit, as the service says, does fit (a dry run admits it) ...
    fits, sigma = err.epochs_that_fit, err.noise_multiplier_that_fits
    assert 0 < fits < 50 and sigma > 1.0
    with ledger.client() as admin:
        shorter = dataclasses.replace(big, epochs=fits)
        assert admin.preview_run(dataset="mnist", name="s", mechanism=shorter).admitted
        noisier = dataclasses.replace(big, noise_multiplier=sigma)
        assert admin.preview_run(dataset="mnist", name="n", mechanism=noisier).admitted
        # ... and is the most that fits.
        with pytest.raises(BudgetExceeded):
            admin.preview_run(
                dataset="mnist", name="s", mechanism=dataclasses.replace(big, epochs=fits + 1)
            )
    assert "budget" in str(err) and str(err).startswith("HTTP 409 budget_exceeded: ")


def test_the_service_errors_map_to_their_classes(ledger):
    with ledger.client() as admin:
        _dataset(admin)
        run = admin.create_run(dataset="mnist", name="r", mechanism=RUN)
        cases = [
            (lambda: _dataset(admin), DatasetExists),
            (lambda: admin.get_dataset("nope"), NotFound),
            (lambda: admin.get_run(999), NotFound),
            (lambda: admin.charge_epoch(run.id, 1), EpochOutOfOrder),
            (lambda: admin.charge_epoch(run.id, 3), EpochBeyondPlan),
            (lambda: _dataset(admin, name="Bad Name"), InvalidInput),
            (
                lambda: admin.create_run(
                    dataset="mnist",
                    name="r",
                    mechanism=DpSgd(sample_rate=0.01, epochs=1, noise_multiplier=-1.0),
                ),
                InvalidInput,
            ),  # fmt: skip
            (
                lambda: admin.calibrate_noise_multiplier(
                    target_epsilon=1e-3, delta=1e-5, sample_rate=1.0, steps=100_000_000
                ),
                CalibrationFailed,
            ),  # fmt: skip
        ]
        for call, expected in cases:
            with pytest.raises(expected) as info:
                call()
            assert type(info.value) is expected, (expected, info.value)
        admin.finish_run(run.id)
        with pytest.raises(RunNotActive):
            admin.charge_epoch(run.id, 0)
    with ledger.client("dpl_unknown") as stranger, pytest.raises(Unauthorized):
        stranger.list_datasets()
    with ledger.client() as admin:
        _dataset(admin, "other")  # a token's scope names existing datasets only
    with ledger.client(ledger.trainer_token("other")) as trainer, pytest.raises(Forbidden):
        trainer.get_budget("mnist")


def test_the_same_idempotency_key_never_registers_a_second_run(ledger):
    with ledger.client() as admin:
        _dataset(admin)
        first = admin.create_run(dataset="mnist", name="r", mechanism=RUN, idempotency_key="k-1")
        again = admin.create_run(dataset="mnist", name="r", mechanism=RUN, idempotency_key="k-1")
        other = admin.create_run(dataset="mnist", name="r", mechanism=RUN, idempotency_key="k-2")
        token = ledger.trainer_token("mnist")
    with ledger.client(token) as trainer:  # keys are per token
        theirs = trainer.create_run(dataset="mnist", name="r", mechanism=RUN, idempotency_key="k-1")
        entries = trainer.list_ledger("mnist").items
    assert again == first and len({first.id, other.id, theirs.id}) == 3
    assert [e.run_id for e in entries if e.kind == "reservation"] == [first.id, other.id, theirs.id]


def test_a_lost_answer_from_the_app_is_retried_into_the_same_run(ledger):
    lost = []

    class LoseFirstRunAnswer(httpx.BaseTransport):
        def handle_request(self, request):
            response = ledger.transport.handle_request(request)  # the app admits the run ...
            if request.url.path == "/v1/runs" and not lost:
                lost.append(response)
                raise httpx.ReadError("connection reset by peer")  # ... the answer is lost
            return response

    with ledger.client() as admin:
        _dataset(admin)
    client = LedgerClient("http://dpledger.test", token=ledger.client().token,
                          transport=LoseFirstRunAnswer(), sleep=lambda s: None)  # fmt: skip
    run = client.create_run(dataset="mnist", name="r", mechanism=RUN)
    assert lost[0].status_code == 201 and lost[0].json()["id"] == run.id
    budget = client.get_budget("mnist")
    assert [r.id for r in budget.runs] == [run.id]


# --- the error map ------------------------------------------------------------------------------


def _app_errors():
    found, todo = [], [AppError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls is not AppError]


@pytest.mark.parametrize("app_error", _app_errors(), ids=lambda cls: cls.code)
def test_every_service_code_has_its_own_class_with_the_same_status(app_error):
    response = httpx.Response(app_error.status_code, json={"code": app_error.code, "message": "m"})
    error = error_from_response(response)
    assert app_error.code in type(error).codes
    assert (error.status, error.code, error.message) == (app_error.status_code, app_error.code, "m")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, InvalidInput), (401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict),
     (422, InvalidInput), (500, ServerError), (502, ServiceUnavailable), (503, ServiceUnavailable),
     (504, ServiceUnavailable), (418, LedgerError), (507, ServerError)],
)  # fmt: skip
def test_unknown_codes_and_bodies_map_by_status(status, expected):
    for response in (
        httpx.Response(status, json={"code": "brand_new", "message": "m"}),
        httpx.Response(status, text="<html>Bad Gateway</html>"),
    ):
        error = error_from_response(response)
        assert type(error) is expected and error.status == status


def test_budget_exceeded_parses_the_optional_fields():
    body = {"code": "budget_exceeded", "message": "m", "epsilon_projected": 9.5,
            "epsilon_remaining": 1.0, "run_id": 7, "epochs_that_fit": 3,
            "noise_multiplier_that_fits": 1.7}  # fmt: skip
    error = error_from_response(httpx.Response(409, json=body))
    assert isinstance(error, BudgetExceeded)
    assert (error.epsilon_projected, error.epsilon_remaining, error.run_id) == (9.5, 1.0, 7)
    assert (error.epochs_that_fit, error.noise_multiplier_that_fits) == (3, 1.7)
    bare = error_from_response(
        httpx.Response(
            409, json={"code": "budget_exceeded", "message": "m", "epsilon_projected": None}
        )
    )
    assert isinstance(bare, BudgetExceeded)
    assert (bare.epsilon_projected, bare.epochs_that_fit, bare.noise_multiplier_that_fits) == (
        None, None, None,
    )  # fmt: skip


# --- results against the service's schemas (drift) ----------------------------------------------


def _results():
    return [
        name for name in client_module.__all__
        if isinstance(getattr(client_module, name), type)
        and issubclass(getattr(client_module, name), BaseModel)
    ]  # fmt: skip


@pytest.mark.parametrize("name", _results())
def test_result_fields_match_the_service_schema(name):
    ours = getattr(client_module, name).model_fields
    theirs = getattr(app.schemas, name).model_fields
    assert set(ours) == set(theirs)


def test_retry_policies_are_checked_and_the_token_never_printed():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="backoff_s"):
        RetryPolicy(backoff_s=-1.0)
    client = LedgerClient("http://ledger:8000", token="dpl_secret")
    assert "dpl_secret" not in repr(client) and client.base_url == "http://ledger:8000"
    client.close()


def test_public_names_exist():
    assert sorted(client_module.__all__) == client_module.__all__
    for name in client_module.__all__:
        assert hasattr(client_module, name)


# --- retries ------------------------------------------------------------------------------------


class Flaky:
    """Answers from a script: an exception to raise or a response; then the default."""

    def __init__(self, *script, default=None):
        self.script = list(script)
        self.default = default or httpx.Response(200, json={"status": "ok"})
        self.requests: list[httpx.Request] = []

    def __call__(self, request):
        self.requests.append(request)
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, Exception):
            raise step
        return step


def _mock(handler, *, retry=None, clock=None):
    sleeps: list[float] = []
    client = LedgerClient(
        "http://ledger", token="t", transport=httpx.MockTransport(handler), sleep=sleeps.append,
        retry=retry or RetryPolicy(max_attempts=4, backoff_s=0.5, max_backoff_s=1.5),
        rng=random.Random(0), clock=clock or (lambda: 0.0),
    )  # fmt: skip
    return client, sleeps


def _connect_error():
    return httpx.ConnectError("connection refused")


def test_idempotent_calls_retry_connection_errors_and_gateways_with_jittered_backoff():
    flaky = Flaky(_connect_error(), httpx.Response(502), httpx.Response(504))
    client, sleeps = _mock(flaky)
    assert client.health().status == "ok"
    assert len(flaky.requests) == 4 and len(sleeps) == 3
    caps = [0.5, 1.0, 1.5]  # backoff_s * 2**n, capped at max_backoff_s
    assert all(0 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) == 3  # jittered, not a fixed ladder
    assert all(r.headers["authorization"] == "Bearer t" for r in flaky.requests)


def test_retry_after_is_honoured():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    flaky = Flaky(
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(503, headers={"Retry-After": when}),
    )
    client, sleeps = _mock(flaky, retry=RetryPolicy(max_attempts=3, backoff_s=0.1))
    client.health()
    assert sleeps[0] == 7.0 and 28 < sleeps[1] <= 30
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_retries_stop_at_max_attempts_and_raise_what_the_last_answer_was():
    client, sleeps = _mock(Flaky(default=httpx.Response(503, json={"code": "x", "message": "m"})))
    with pytest.raises(ServiceUnavailable) as info:
        client.get_run(1)
    assert info.value.status == 503 and len(sleeps) == 3
    client, sleeps = _mock(Flaky(*[_connect_error()] * 10))
    with pytest.raises(Unreachable, match="ConnectError"):
        client.finish_run(1)
    assert len(sleeps) == 3


def test_retries_stop_when_the_time_budget_would_run_out():
    now = [0.0]

    def sleep_and_tick(seconds):
        now[0] += seconds

    flaky = Flaky(*[httpx.Response(503, headers={"Retry-After": "4"})] * 10)
    client = LedgerClient(
        "http://l", transport=httpx.MockTransport(flaky), sleep=sleep_and_tick,
        clock=lambda: now[0], retry=RetryPolicy(max_attempts=100, max_elapsed_s=10.0),
    )  # fmt: skip
    with pytest.raises(ServiceUnavailable):
        client.charge_batch(1, 0)
    assert len(flaky.requests) == 3 and now[0] == 8.0  # a third sleep would end at 12 s > 10 s


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.create_dataset(name="d", target_epsilon=1.0, target_delta=1e-5),
        lambda c: c.create_token(name="t", role="viewer"),
    ],
)
def test_calls_that_are_not_idempotent_are_never_retried(call):
    for failure in (_connect_error(), httpx.Response(503)):
        flaky = Flaky(failure)
        client, sleeps = _mock(flaky)
        with pytest.raises(ServiceUnavailable):
            call(client)
        assert len(flaky.requests) == 1 and sleeps == []


def test_4xx_and_500_are_not_retried():
    for status in (409, 422, 500):
        flaky = Flaky(httpx.Response(status, json={"code": "conflict", "message": "m"}))
        client, sleeps = _mock(flaky)
        with pytest.raises(LedgerError):
            client.charge_epoch(1, 0)
        assert len(flaky.requests) == 1 and sleeps == []


# --- idempotency keys ---------------------------------------------------------------------------


def _run_json(run_id):
    return {"id": run_id, "dataset": "d", "name": "r", "kind": "dp_sgd", "mechanism": {},
            "sample_rate": 0.01, "steps_per_epoch": 100, "epochs": 3, "noise": None,
            "max_grad_norm": None, "reservation": "plan", "status": "admitted",
            "epochs_charged": 0, "created_at": "2026-01-01T00:00:00Z"}  # fmt: skip


class LostFirstAnswer:
    """Registers every run it receives, but the first answer never reaches the client."""

    def __init__(self):
        self.runs_by_key: dict[str, int] = {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request):
        self.requests.append(request)
        key = request.headers["idempotency-key"]
        run_id = self.runs_by_key.setdefault(key, len(self.runs_by_key) + 1)
        if len(self.requests) == 1:
            raise httpx.ReadError("connection reset by peer")
        return httpx.Response(201, json=_run_json(run_id))


def test_a_lost_answer_is_retried_with_the_same_idempotency_key():
    server = LostFirstAnswer()
    client, _ = _mock(server)
    run = client.create_run(dataset="d", name="r", mechanism=RUN)
    first, second = server.requests
    key = first.headers["idempotency-key"]
    assert second.headers["idempotency-key"] == key and uuid.UUID(key).version == 4
    assert json.loads(first.content) == json.loads(second.content)
    assert run.id == 1 and server.runs_by_key == {key: 1}
    client.create_run(dataset="d", name="r", mechanism=RUN)
    assert server.requests[-1].headers["idempotency-key"] != key  # a new run, a new key
    client.create_run(dataset="d", name="r", mechanism=RUN, idempotency_key="job-42")
    assert server.requests[-1].headers["idempotency-key"] == "job-42"


def test_a_malformed_success_is_a_ledger_error():
    client, _ = _mock(Flaky(default=httpx.Response(200, json={"id": "x"})))
    with pytest.raises(LedgerError, match="unexpected answer to GET /v1/runs/1"):
        client.get_run(1)


def test_run_body_is_the_mechanism_form():
    body = LedgerClient.run_body(dataset="d", name="r", mechanism=RUN, reservation="epoch")
    assert body == {
        "dataset": "d", "name": "r", "reservation": "epoch",
        "mechanism": {"kind": "dp_sgd", "sample_rate": 0.01, "epochs": 3, "max_grad_norm": 1.0,
                      "noise": {"schedule": "constant", "noise_multiplier": 1.0, "decay_rate": 0.0}},
    }  # fmt: skip


def test_a_reproducible_run_is_sent_and_read_back_as_such(tmp_path):
    from tests.unit.dpledger.app_client import running_app

    with running_app(tmp_path) as running, running.client() as admin:
        admin.create_dataset(name="d", target_epsilon=8.0, target_delta=1e-5)
        mechanism = DpSgd(sample_rate=0.01, epochs=2, noise_multiplier=1.0)
        seeded = admin.create_run(
            dataset="d", name="s", mechanism=mechanism, reproducible_noise=True
        )
        plain = admin.create_run(dataset="d", name="p", mechanism=mechanism)
        assert seeded.reproducible_noise and not plain.reproducible_noise
        assert admin.get_run(seeded.id).reproducible_noise
        assert "reproducible_noise" not in LedgerClient.run_body(
            dataset="d", name="p", mechanism=mechanism
        )  # the default is not sent: an older service still accepts the body
