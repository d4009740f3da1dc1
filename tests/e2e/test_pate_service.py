"""`dpledger pate --service`: the job is reserved, each batch charged before it is answered."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dpledger.cli import cli
from dpledger.client import LedgerClient
from tests.integration.conftest import ADMIN_TOKEN as ADMIN
from tests.integration.server import Server


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pate-ledger")
    server = Server(f"sqlite:///{tmp / 'ledger.db'}", tmp / "server.log").start()
    try:
        with LedgerClient(server.url, token=ADMIN) as admin:
            yield admin
    finally:
        server.stop()


def _votes(tmp_path, queries=50):
    rng = np.random.default_rng(0)
    votes = rng.multinomial(100, [0.7, 0.1, 0.1, 0.1], size=queries)
    path = tmp_path / "votes.npy"
    np.save(path, votes)
    return path


def _pate(service, dataset, votes, *extra, token=ADMIN):
    args = ["pate", "--votes", str(votes), "--aggregator", "gnmax", "--noise-multiplier", "20",
            "--delta", "1e-5", "--json", "--service", service.base_url,
            "--token", token, "--dataset", dataset, *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _dataset(service, name, epsilon):
    service.create_dataset(name=name, target_epsilon=epsilon, target_delta=1e-5)


def test_pate_job_is_charged_batch_by_batch(service, tmp_path):
    _dataset(service, "pate-ok", 8.0)
    result = _pate(service, "pate-ok", _votes(tmp_path), "--batch-size", "20")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["batches_charged"], report["queries_answered"]) == (3, 50)
    assert report["stop_reason"] == "completed" and report["queries"] == 50
    run = service.get_run(report["run_id"])
    assert (run.kind, run.status, run.epochs_charged) == ("pate", "finished", 3)
    assert np.load(report["labels_path"]).shape == (50,)
    budget = service.get_budget("pate-ok")
    assert [row.kind for row in budget.by_kind] == ["pate"]
    assert budget.by_kind[0].epsilon_run == pytest.approx(
        report["epsilon_data_independent"], rel=0.05
    )


def test_pate_job_over_budget_is_refused_up_front(service, tmp_path):
    _dataset(service, "pate-small", 0.5)
    votes = _votes(tmp_path)
    result = _pate(service, "pate-small", votes)
    assert result.exit_code == 3
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("refused: budget_exceeded: epsilon of 'pate-small' would reach ")
    (run,) = service.get_budget("pate-small").runs
    assert run.status == "refused"
    projected = float(line.split("would reach ")[1].split(",")[0])
    assert projected > 0.5
    assert not (tmp_path / "votes.labels.npy").exists()


@pytest.mark.parametrize(
    ("token", "dataset", "said"),
    [
        ("dpl_wrong", "pate-errors", "HTTP 401 unauthorized"),
        (ADMIN, "no-such", "HTTP 404 not_found"),
    ],
)
def test_ledger_errors_are_reported_as_what_they_are(service, tmp_path, token, dataset, said):
    if not any(d.name == "pate-errors" for d in service.list_datasets().items):
        _dataset(service, "pate-errors", 8.0)
    result = _pate(service, dataset, _votes(tmp_path), token=token)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the ledger at http://127.0.0.1:") and said in line
    assert not (tmp_path / "votes.labels.npy").exists()
