"""`dpledger pate --service`: the job is reserved, each batch charged before it is answered."""

import json

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from dpledger.cli import cli
from tests.integration.conftest import ADMIN_TOKEN as ADMIN
from tests.integration.server import Server

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pate-ledger")
    server = Server(f"sqlite:///{tmp / 'ledger.db'}", tmp / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0, headers=ADMIN_HEADERS) as client:
            yield client
    finally:
        server.stop()


def _votes(tmp_path, queries=50):
    rng = np.random.default_rng(0)
    votes = rng.multinomial(100, [0.7, 0.1, 0.1, 0.1], size=queries)
    path = tmp_path / "votes.npy"
    np.save(path, votes)
    return path


def _pate(service, dataset, votes, *extra):
    args = ["pate", "--votes", str(votes), "--aggregator", "gnmax", "--noise-multiplier", "20",
            "--delta", "1e-5", "--seed", "1", "--json", "--service", str(service.base_url),
            "--token", ADMIN, "--dataset", dataset, *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _dataset(service, name, epsilon):
    r = service.post("/v1/datasets", json={"name": name, "target_epsilon": epsilon,
                                           "target_delta": 1e-5})  # fmt: skip
    assert r.status_code == 201, r.text


def test_pate_job_is_charged_batch_by_batch(service, tmp_path):
    _dataset(service, "pate-ok", 8.0)
    result = _pate(service, "pate-ok", _votes(tmp_path), "--batch-size", "20")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["batches_charged"], report["queries_answered"]) == (3, 50)
    assert report["stop_reason"] == "completed" and report["queries"] == 50
    run = service.get(f"/v1/runs/{report['run_id']}").json()
    assert (run["kind"], run["status"], run["epochs_charged"]) == ("pate", "finished", 3)
    assert np.load(report["labels_path"]).shape == (50,)
    budget = service.get("/v1/datasets/pate-ok/budget").json()
    assert [row["kind"] for row in budget["by_kind"]] == ["pate"]
    assert budget["by_kind"][0]["epsilon_run"] == pytest.approx(
        report["epsilon_data_independent"], rel=0.05
    )


def test_pate_job_over_budget_is_refused_up_front(service, tmp_path):
    _dataset(service, "pate-small", 0.5)
    votes = _votes(tmp_path)
    result = _pate(service, "pate-small", votes)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("refused: budget_exceeded")
    assert not (tmp_path / "votes.labels.npy").exists()
