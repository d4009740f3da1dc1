"""Every mechanism in one ledger: PATE jobs, Laplace/Gaussian releases, approximate-DP releases.

Expected RDP values are closed forms written out here (GNMax: alpha/sigma^2 per query, Papernot
et al. 2018; Gaussian release: alpha * s^2 / (2 std^2), Mironov 2017 Prop. 7; Laplace release:
Mironov 2017 Prop. 6), independent of dp_core; the filter is replayed with the issue's rule.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.integration.conftest import assert_charged, make_dataset, run_body, snapshot
from tests.integration.test_api_reservation import simulate
from tests.integration.test_api_runs import capacity, planned_rdp

pytestmark = pytest.mark.anyio


def pate(queries=100, sigma=40.0, batch_size=None, aggregator="gnmax"):
    mechanism = {"kind": "pate", "aggregator": aggregator, "noise_multiplier": sigma,
                 "queries": queries}  # fmt: skip
    if batch_size is not None:
        mechanism["batch_size"] = batch_size
    return {"dataset": "mnist", "name": "pate", "mechanism": mechanism}


def release(kind, **fields):
    return {"dataset": "mnist", "name": kind, "mechanism": {"kind": kind, **fields}}


def gnmax_rdp(orders, sigma, queries):
    return np.asarray(orders) / sigma**2 * queries


def laplace_rdp(orders, b):
    a = np.asarray(orders)
    return np.log(
        a / (2 * a - 1) * np.exp((a - 1) / b) + (a - 1) / (2 * a - 1) * np.exp(-a / b)
    ) / (a - 1)


async def test_pate_job_reserves_its_curve_and_charges_per_batch(client, database_url):
    dataset = await make_dataset(client, target_epsilon=8.0)
    orders = dataset["orders"]
    created = await client.post("/v1/runs", json=pate(queries=100, batch_size=30))
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["kind"], job["epochs"], job["sample_rate"], job["noise"]) == ("pate", 4, None, None)
    assert job["mechanism"]["batch_size"] == 30
    state = snapshot(database_url)["datasets"][0]
    assert_charged(state[1], gnmax_rdp(orders, 40.0, 100))
    assert state[2] == [0.0] * len(orders), "nothing is committed before a batch is charged"

    for batch in range(3):
        r = await client.post(f"/v1/runs/{job['id']}/batches", json={"batch": batch})
        assert r.status_code == 200, r.text
    committed = snapshot(database_url)["datasets"][0][2]
    assert_charged(committed, gnmax_rdp(orders, 40.0, 90))
    finished = (await client.post(f"/v1/runs/{job['id']}/finish")).json()
    assert (finished["status"], finished["epochs_charged"]) == ("finished", 3)
    reserved = snapshot(database_url)["datasets"][0][1]
    # The 10 queries of the last batch were released: S equals the charges exactly.
    assert reserved == committed


async def test_releases_are_admitted_and_charged_at_once(client, database_url):
    dataset = await make_dataset(client)
    orders = dataset["orders"]
    g = await client.post(
        "/v1/runs", json=release("gaussian_release", sensitivity=2.0, noise_std=10.0)
    )
    lap = await client.post(
        "/v1/runs", json=release("laplace_release", sensitivity=1.0, noise_scale=4.0)
    )
    assert g.status_code == lap.status_code == 201, (g.text, lap.text)
    for run in (g.json(), lap.json()):
        assert (run["status"], run["epochs"], run["epochs_charged"]) == ("finished", 1, 1)
        again = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
        assert again.status_code == 200, "a retry of the one charge is idempotent"
    expected = np.asarray(orders) * 4.0 / (2 * 100.0) + laplace_rdp(orders, 4.0)
    state = snapshot(database_url)["datasets"][0]
    assert_charged(state[2], expected, units=2)
    assert state[1] == state[2]
    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    assert [(e["kind"], e["epoch"]) for e in ledger] == [("charge", 0), ("charge", 0)]
    assert ledger[0]["mechanism"]["mechanism"]["type"] == "gaussian"


async def test_a_pate_job_and_a_dp_sgd_run_share_one_budget(client, database_url):
    dataset = await make_dataset(client, target_epsilon=3.0)
    cap = capacity(dataset["orders"], dataset["weights"], 3.0, 1e-5)
    pate_curve = gnmax_rdp(dataset["orders"], 60.0, 400)
    sgd_curve = planned_rdp(dataset["orders"], sample_rate=0.004, noise_multiplier=1.0, epochs=30)
    assert simulate(cap, [pate_curve]) == [True]
    assert simulate(cap, [sgd_curve]) == [True], "either alone fits"
    assert simulate(cap, [pate_curve, sgd_curve]) == [True, False], "not both"

    assert (await client.post("/v1/runs", json=pate(queries=400, sigma=60.0))).status_code == 201
    before = snapshot(database_url)["datasets"]
    refused = await client.post("/v1/runs", json=run_body(epochs=30))
    assert refused.status_code == 409 and refused.json()["code"] == "budget_exceeded"
    assert snapshot(database_url)["datasets"] == before

    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    kinds = {row["kind"]: row for row in budget["by_kind"]}
    assert kinds["pate"]["runs"] == 1 and kinds["pate"]["epsilon_run"] == 0.0
    assert kinds["dp_sgd"]["runs"] == 1  # the refused run is listed, having spent nothing
    assert {run["kind"] for run in budget["runs"]} == {"pate", "dp_sgd"}


async def test_approx_dp_releases_use_their_own_sub_budget(client, database_url):
    dataset = await make_dataset(client, target_epsilon=3.0, approx_dp_epsilon=1.0,
                                 approx_dp_delta=2e-6)  # fmt: skip
    assert dataset["approx_dp"] == {"epsilon": 1.0, "delta": 2e-6, "epsilon_spent": 0.0,
                                    "delta_spent": 0.0, "epsilon_remaining": 1.0}  # fmt: skip
    # The filter guards the rest of the budget: B(a) at (2.0, 8e-6).
    state = snapshot(database_url)
    first = await client.post(
        "/v1/runs", json=release("approx_dp_release", epsilon=0.6, delta=1e-6)
    )
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "finished"
    over = await client.post("/v1/runs", json=release("approx_dp_release", epsilon=0.5, delta=0.0))
    assert over.status_code == 409
    body = over.json()
    assert body["code"] == "budget_exceeded" and body["budget"] == "approx_dp"
    assert body["epsilon_remaining"] == pytest.approx(0.4)
    fits = await client.post("/v1/runs", json=release("approx_dp_release", epsilon=0.4, delta=1e-6))
    assert fits.status_code == 201, fits.text

    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert budget["approx_dp"]["epsilon_spent"] == pytest.approx(1.0)
    assert budget["approx_dp"]["delta_spent"] == pytest.approx(2e-6)
    assert budget["epsilon_spent"] == pytest.approx(1.0), "the RDP part has spent nothing"
    assert budget["epsilon_remaining"] == pytest.approx(2.0)
    assert first.json()["epsilon_run"] == 0.6, "an approx-DP release's epsilon is its own"
    assert {row["kind"]: row["epsilon_run"] for row in budget["by_kind"]} == {
        "approx_dp_release": pytest.approx(1.0)
    }
    assert snapshot(database_url)["datasets"][0][1:] == state["datasets"][0][1:]


async def test_approx_dp_sub_budget_shrinks_the_filter(client, database_url):
    plain = await make_dataset(client, name="plain", target_epsilon=3.0)
    carved = await make_dataset(client, name="carved", target_epsilon=3.0, approx_dp_epsilon=1.0,
                                approx_dp_delta=5e-6)  # fmt: skip
    orders = plain["orders"]
    curve = planned_rdp(orders, sample_rate=0.004, noise_multiplier=1.0, epochs=45)
    assert simulate(capacity(orders, plain["weights"], 3.0, 1e-5), [curve]) == [True]
    assert simulate(capacity(orders, carved["weights"], 2.0, 5e-6), [curve]) == [False]
    ok = await client.post("/v1/runs", json=run_body(dataset="plain", epochs=45))
    refused = await client.post("/v1/runs", json=run_body(dataset="carved", epochs=45))
    assert (ok.status_code, refused.status_code) == (201, 409)


@pytest.mark.parametrize(
    ("patch", "parameter"),
    [
        ({"approx_dp_epsilon": 3.0}, "approx_dp_epsilon"),
        ({"approx_dp_delta": 1e-5}, "approx_dp_delta"),
    ],
)
async def test_sub_budget_must_leave_the_filter_something(client, database_url, patch, parameter):
    before = snapshot(database_url)
    body = {"name": "x", "target_epsilon": 3.0, "target_delta": 1e-5, **patch}
    response = await client.post("/v1/datasets", json=body)
    assert response.status_code == 422 and response.json()["parameter"] == parameter
    assert snapshot(database_url) == before


BAD_MECHANISMS = [
    ("both forms", {**run_body(), "mechanism": pate()["mechanism"]}),
    ("neither form", {"dataset": "mnist", "name": "x"}),
    ("unknown kind", release("smoke_signal", epsilon=1.0)),
    ("unknown aggregator", pate(aggregator="maxmax")),
    ("zero queries", pate(queries=0)),
    ("negative noise", release("gaussian_release", sensitivity=1.0, noise_std=-1.0)),
    ("missing sensitivity", release("laplace_release", noise_scale=1.0)),
    ("nan epsilon", release("approx_dp_release", epsilon=math.nan, delta=0.0)),
    ("approx delta 1", release("approx_dp_release", epsilon=0.1, delta=1.0)),
]


@pytest.mark.parametrize(("label", "body"), BAD_MECHANISMS, ids=[b[0] for b in BAD_MECHANISMS])
async def test_bad_mechanisms_are_422_and_write_nothing(client, database_url, label, body):
    await make_dataset(client)
    before = snapshot(database_url)
    content = __import__("json").dumps(body, allow_nan=True)
    response = await client.post(
        "/v1/runs", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, (label, response.text)
    assert response.json()["code"] in ("invalid_input", "invalid_input")
    assert snapshot(database_url) == before


async def test_approx_release_without_a_sub_budget_is_refused(client, database_url):
    await make_dataset(client)
    r = await client.post("/v1/runs", json=release("approx_dp_release", epsilon=0.1, delta=0.0))
    assert r.status_code == 409 and r.json()["budget"] == "approx_dp"
