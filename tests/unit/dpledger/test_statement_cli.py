"""`dpledger statement --run ID --service URL`: the ledger's statement through `LedgerClient`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import dpledger.statement_cli as statement_cli
from dpledger.cli import cli
from dpledger.client import DpSgd

from .app_client import ADMIN_TOKEN, BASE_URL, running_app

runner = CliRunner()


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    with running_app(tmp_path) as running:
        monkeypatch.setattr(
            statement_cli, "LedgerClient", lambda _url, *, token: running.client(token)
        )
        yield running


def _charged_run(ledger, epochs_charged: int) -> int:
    with ledger.client() as admin:
        admin.create_dataset(name="mnist", target_epsilon=3.0, target_delta=1e-5)
        mechanism = DpSgd(sample_rate=0.01, epochs=3, noise_multiplier=1.1, max_grad_norm=1.0)
        run = admin.create_run(dataset="mnist", name="r", mechanism=mechanism)
        for epoch in range(epochs_charged):
            admin.charge_epoch(run.id, epoch)
        return run.id


def test_the_cli_prints_what_the_api_serves_and_equals_the_offline_statement(ledger):
    run_id = _charged_run(ledger, 2)
    with ledger.client() as admin:
        served = admin.statement(run_id, records_per_user=2)
        budget = admin.get_budget("mnist")
    assert served.epsilon_spent == budget.epsilon_spent
    assert served.epsilon_run == budget.runs[0].epsilon_run
    args = [
        "statement",
        "--run",
        str(run_id),
        "--service",
        BASE_URL,
        "--token",
        ADMIN_TOKEN,
        "-K",
        "2",
    ]
    as_json = runner.invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == served.model_dump(mode="json")
    text = runner.invoke(cli, args)
    assert text.stdout.strip() == served.text.strip()
    offline = runner.invoke(cli, [
        "statement", "--sample-rate", "0.01", "--steps", "200", "--noise-multiplier", "1.1",
        "--delta", "1e-5", "-K", "2", "--json",
    ])  # fmt: skip
    numbers = json.loads(offline.stdout)
    numbers.pop("text")
    assert served.dp_sgd is not None
    assert served.dp_sgd.model_dump(mode="json") == numbers


def test_an_unknown_run_exits_2_with_one_line(ledger):
    _charged_run(ledger, 0)
    result = runner.invoke(
        cli, ["statement", "--run", "99", "--service", BASE_URL, "--token", ADMIN_TOKEN]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no run 99" in lines[0]


def test_offline_needs_the_noise_and_delta():
    result = runner.invoke(cli, ["statement", "--sample-rate", "0.01", "--steps", "10"])
    assert result.exit_code == 2 and "--noise-multiplier" in result.stderr
