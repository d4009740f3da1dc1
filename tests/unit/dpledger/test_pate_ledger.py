"""`dpledger pate --service` through `LedgerClient`: refusals, errors, and what each one says."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

import dpledger.pate_cli as pate_cli
from dpledger.cli import cli
from dpledger.client import LedgerClient, RetryPolicy

from .app_client import ADMIN_TOKEN, running_app


def _votes(tmp_path, queries=30):
    votes = np.random.default_rng(0).multinomial(100, [0.7, 0.1, 0.1, 0.1], size=queries)
    path = tmp_path / "votes.npy"
    np.save(path, votes)
    return path


def _pate(tmp_path, token=ADMIN_TOKEN, dataset="d", *extra):
    args = ["pate", "--votes", str(_votes(tmp_path)), "--aggregator", "gnmax",
            "--noise-multiplier", "20", "--delta", "1e-5", "--json",
            "--service", "http://ledger", "--token", token, "--dataset", dataset, *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _route_clients(monkeypatch, make):
    """Make the command's `LedgerClient(url, token=...)` talk through ``make(token)``."""
    monkeypatch.setattr(pate_cli, "LedgerClient", lambda _url, *, token: make(token))


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    with running_app(tmp_path) as running:
        _route_clients(monkeypatch, running.client)
        with running.client() as admin:
            admin.create_dataset(name="d", target_epsilon=8.0, target_delta=1e-5)
            admin.create_dataset(name="tiny", target_epsilon=0.3, target_delta=1e-5)
        yield running


def test_batches_are_charged_before_they_are_answered(ledger, tmp_path):
    result = _pate(tmp_path, ADMIN_TOKEN, "d", "--batch-size", "7")
    assert result.exit_code == 0, result.output
    with ledger.client() as admin:
        (run,) = admin.get_budget("d").runs
        charges = [e.epoch for e in admin.list_ledger("d").items if e.kind == "charge"]
    assert (run.kind, run.status, run.epochs_charged, charges) == (
        "pate",
        "finished",
        5,
        [0, 1, 2, 3, 4],
    )


def test_a_refusal_says_so_with_the_projected_epsilon(ledger, tmp_path):
    result = _pate(tmp_path, ADMIN_TOKEN, "tiny")
    assert result.exit_code == 3  # refused by the budget: the same status as every command
    (line,) = result.stderr.strip().splitlines()
    with ledger.client() as admin:
        (run,) = admin.get_budget("tiny").runs
    assert run.status == "refused"
    assert line.startswith("refused: budget_exceeded: epsilon of 'tiny' would reach ")
    assert float(line.split("would reach ")[1].split(",")[0]) > 0.2


@pytest.mark.parametrize(
    ("token", "dataset", "said"),
    [("dpl_wrong", "d", "HTTP 401 unauthorized"), (ADMIN_TOKEN, "nope", "HTTP 404 not_found")],
)
def test_service_errors_are_errors_not_refusals(ledger, tmp_path, token, dataset, said):
    result = _pate(tmp_path, token, dataset)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the ledger at http://ledger: ") and said in line
    assert not (tmp_path / "votes.labels.npy").exists()


def test_a_trainer_token_of_another_dataset_is_forbidden(ledger, tmp_path):
    result = _pate(tmp_path, ledger.trainer_token("tiny"), "d")
    assert result.exit_code == 2 and "HTTP 403 forbidden" in result.stderr


@pytest.mark.parametrize(
    ("answer", "said", "status"),
    [
        (
            httpx.Response(500, text="Internal Server Error"),
            "HTTP 500 error: Internal Server Error",
            1,
        ),
        (
            httpx.Response(
                422, json={"code": "invalid_input", "message": "mechanism.queries: too big"}
            ),
            "HTTP 422 invalid_input: mechanism.queries: too big",
            2,
        ),  # fmt: skip
        (httpx.ConnectError("connection refused"), "ledger unreachable", 1),
    ],
)
def test_service_failures_exit_1_and_rejected_input_2(monkeypatch, tmp_path, answer, said, status):
    def handler(request):
        if isinstance(answer, Exception):
            raise answer
        return answer

    _route_clients(monkeypatch, lambda token: LedgerClient(
        "http://ledger", token=token, transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=1),
    ))  # fmt: skip
    result = _pate(tmp_path)
    assert result.exit_code == status
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the ledger at http://ledger: ") and said in line


def test_a_failure_mid_job_still_finishes_the_run(ledger, monkeypatch, tmp_path):
    class FailSecondBatch(httpx.BaseTransport):
        def handle_request(self, request):
            if request.url.path.endswith("/batches") and b'"batch":1' in request.content:
                return httpx.Response(500, text="boom")
            return ledger.transport.handle_request(request)

    _route_clients(monkeypatch, lambda token: LedgerClient(
        "http://ledger", token=token, transport=FailSecondBatch(), retry=RetryPolicy(max_attempts=1)
    ))  # fmt: skip
    result = _pate(tmp_path, ADMIN_TOKEN, "d", "--batch-size", "10")
    assert result.exit_code == 1 and "HTTP 500 error: boom" in result.stderr
    with ledger.client() as admin:
        (run,) = admin.get_budget("d").runs
    assert (run.status, run.epochs_charged) == ("finished", 1)  # the unused batches released
    assert not (tmp_path / "votes.labels.npy").exists()


def test_a_reproducible_job_is_warned_about_and_recorded_as_such(ledger, tmp_path):
    result = _pate(tmp_path, ADMIN_TOKEN, "d", "--seed", "4", "--reproducible-noise")
    assert result.exit_code == 0, result.output
    assert "does NOT hold against anyone who knows the seed" in result.stderr
    report = json.loads(result.stdout)
    assert report["seed"] == 4 and report["reproducible_noise"] is True
    with ledger.client() as admin:
        assert admin.get_run(report["run_id"]).reproducible_noise


def test_a_secret_job_prints_no_seed(ledger, tmp_path):
    result = _pate(tmp_path, ADMIN_TOKEN, "d")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["seed"] is None and report["reproducible_noise"] is False
    with ledger.client() as admin:
        assert not admin.get_run(report["run_id"]).reproducible_noise
