"""GET /v1/runs/{id}/statement: the ledger's numbers equal the run and budget endpoints', the
DP-SGD numbers equal `dpledger statement`'s (the library's) for the charged steps."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

import dp_core
from app.services import statement as statement_service
from dpledger.cli import cli
from tests.integration.conftest import auth, make_dataset, run_body

pytestmark = pytest.mark.anyio


async def _charge(client, run_id: int, epochs: int) -> None:
    for epoch in range(epochs):
        response = await client.post(f"/v1/runs/{run_id}/epochs", json={"epoch": epoch})
        assert response.status_code == 200, response.text


async def test_statement_numbers_equal_the_budget_and_the_cli(client):
    await make_dataset(client)
    other = (await client.post("/v1/runs", json=run_body(name="other", epochs=2))).json()
    await _charge(client, other["id"], 1)
    run = (await client.post("/v1/runs", json=run_body(sample_rate=0.01, epochs=5))).json()
    await _charge(client, run["id"], 3)

    response = await client.get(f"/v1/runs/{run['id']}/statement", params={"records_per_user": 2})
    assert response.status_code == 200, response.text
    got = response.json()
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    row = next(r for r in budget["runs"] if r["id"] == run["id"])
    assert got["epsilon_run"] == row["epsilon_run"]
    assert got["epsilon_run"] == (await client.get(f"/v1/runs/{run['id']}")).json()["epsilon_run"]
    assert got["epsilon_spent"] == budget["epsilon_spent"]  # both runs' charges, the filter's
    assert (got["units_charged"], got["units_planned"], got["delta"]) == (3, 5, 1e-5)
    assert got["epsilon_run"] < got["epsilon_run_planned"]
    assert got["epsilon_run_order"] in budget_orders(budget)
    assert got["mechanism"]["kind"] == "dp_sgd" and got["sampling"] == "poisson"
    assert "shuffled" in got["shuffling_note"]

    # The DP-SGD part is `dpledger statement --json` for the 3 x 100 charged steps.
    cli_args = ["statement", "--sample-rate", "0.01", "--steps", "300", "--noise-multiplier",
                "1.0", "--delta", "1e-5", "--records-per-user", "2", "--json"]  # fmt: skip
    result = CliRunner().invoke(cli, cli_args)
    assert result.exit_code == 0, result.output
    offline = json.loads(result.stdout)
    text = offline.pop("text")
    assert got["dp_sgd"] == offline
    assert text in got["text"]
    # The ledger's RDP (12 orders, costs rounded up) is never below the refined one.
    assert got["epsilon_run"] >= got["dp_sgd"]["epsilon_rdp"]
    assert got["dp_sgd"]["epsilon_pld"] < got["dp_sgd"]["epsilon_rdp"]


def budget_orders(budget):
    return [row["order"] for row in budget["orders"]]


async def test_one_record_per_user_is_example_level(client):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body(sample_rate=0.01, epochs=2))).json()
    await _charge(client, run["id"], 2)
    got = (await client.get(f"/v1/runs/{run['id']}/statement")).json()["dp_sgd"]
    assert got["user"]["records_per_user"] == 1
    assert got["user"]["epsilon_rdp"] == got["epsilon_rdp"]
    assert got["user"]["epsilon_pld"] == got["epsilon_pld"]
    expected = dp_core.compute_epsilon_pld(
        sample_rate=0.01, noise_multiplier=1.0, steps=200, delta=1e-5
    )
    assert got["epsilon_pld"] == expected.epsilon


async def test_a_viewer_reads_it_and_bad_k_is_422(client):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    token = (
        await client.post("/v1/tokens", json={"name": "v", "role": "viewer", "datasets": []})
    ).json()["token"]
    viewer = await client.get(f"/v1/runs/{run['id']}/statement", headers=auth(token))
    assert viewer.status_code == 200
    body = viewer.json()
    assert body["units_charged"] == 0 and body["epsilon_run"] == 0.0
    assert body["dp_sgd"]["epsilon_rdp"] == 0.0
    for k in (0, 65):
        bad = await client.get(f"/v1/runs/{run['id']}/statement", params={"records_per_user": k})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    assert (await client.get("/v1/runs/999/statement")).status_code == 404


async def test_release_statement_has_no_dp_sgd_part(client):
    await make_dataset(client)
    body = {"dataset": "mnist", "name": "count",
            "mechanism": {"kind": "gaussian_release", "sensitivity": 1.0, "noise_std": 5.0}}  # fmt: skip
    run = (await client.post("/v1/runs", json=body)).json()
    got = (await client.get(f"/v1/runs/{run['id']}/statement")).json()
    assert got["dp_sgd"] is None and got["sampling"] is None
    assert got["epsilon_run"] == got["epsilon_run_planned"] == run["epsilon_run"]


async def test_a_decaying_100_epoch_run_gets_its_pld_within_the_work_bound(client):
    await make_dataset(client, target_epsilon=50.0)
    noise = {"schedule": "exponential", "noise_multiplier": 2.0, "decay_rate": 1e-5}
    run = (
        await client.post("/v1/runs", json=run_body(sample_rate=0.01, epochs=100, noise=noise))
    ).json()
    await _charge(client, run["id"], 100)
    start = time.process_time()
    got = await client.get(f"/v1/runs/{run['id']}/statement", params={"records_per_user": 4})
    spent = time.process_time() - start
    assert got.status_code == 200, got.text
    body = got.json()["dp_sgd"]
    assert body["steps"] == 10_000 and body["epsilon_pld"] is not None
    print(f"statement of a 100-epoch decaying run (K=4): {spent:.2f} s CPU")


async def test_a_statement_beyond_the_work_limit_falls_back_to_rdp_with_a_note(client):
    """q 0.5, sigma 500, 10^7 steps: cheap to admit, took 23-30 s and 1 GB to state."""
    await make_dataset(client, target_epsilon=50.0)
    noise = {"schedule": "constant", "noise_multiplier": 500.0, "decay_rate": 0.0}
    body = run_body(sample_rate=0.5, steps_per_epoch=10_000_000, epochs=1, noise=noise)
    run = (await client.post("/v1/runs", json=body)).json()
    await _charge(client, run["id"], 1)
    start = time.process_time()
    got = await client.get(f"/v1/runs/{run['id']}/statement")
    spent = time.process_time() - start
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["dp_sgd"] is None
    assert "10000000 steps" in body["dp_sgd_note"] and "work limit" in body["dp_sgd_note"]
    assert body["epsilon_run"] is not None and body["epsilon_run"] > 0
    assert body["dp_sgd_note"] in body["text"]
    print(f"statement beyond the work limit: {spent:.2f} s CPU")


async def test_statement_numbers_are_cached_per_run_and_charge(client, monkeypatch):
    calls = []
    original = statement_service.build_privacy_statement

    def counting(**kwargs):
        calls.append(kwargs["steps"])
        return original(**kwargs)

    monkeypatch.setattr(statement_service, "build_privacy_statement", counting)
    await make_dataset(client, target_epsilon=50.0)
    run = (await client.post("/v1/runs", json=run_body(sample_rate=0.01, epochs=3))).json()
    await _charge(client, run["id"], 1)
    first = (await client.get(f"/v1/runs/{run['id']}/statement")).json()
    second = (await client.get(f"/v1/runs/{run['id']}/statement")).json()
    assert first == second and calls == [100]
    await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 1})
    third = (await client.get(f"/v1/runs/{run['id']}/statement")).json()
    assert calls == [100, 200] and third["dp_sgd"]["steps"] == 200
