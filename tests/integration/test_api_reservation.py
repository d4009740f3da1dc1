"""Pay-as-you-go runs (reservation=epoch): each epoch passes the filter when it is charged.

The expected refusal point is computed here with the issue's rule written out independently
(capacity formula, per-order sums, alive set) from dp_core's per-epoch RDP.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import assert_charged, make_dataset, run_body, snapshot
from tests.integration.test_api_runs import capacity, planned_rdp

pytestmark = pytest.mark.anyio


def simulate(cap, requests):
    """Admit each RDP curve in turn under the filter rule; return the admitted flags."""
    spent = np.zeros_like(cap)
    alive = np.ones_like(cap, dtype=bool)
    admitted = []
    for x in requests:
        fits = alive & (spent + x <= cap)
        admitted.append(bool(fits.any()))
        if fits.any():
            spent = spent + x
            alive &= spent <= cap
    return admitted


async def test_epoch_mode_reserves_nothing_and_charges_through_the_filter(client, database_url):
    dataset = await make_dataset(client)
    created = await client.post("/v1/runs", json=run_body(reservation="epoch"))
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["reservation"] == "epoch"
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert budget["epsilon_reserved"] == 0.0
    assert [
        e["kind"] for e in (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    ] == []

    charged = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert charged.status_code == 200
    state = snapshot(database_url)["datasets"][0]
    one_epoch = planned_rdp(dataset["orders"], sample_rate=0.004, noise_multiplier=1.0, epochs=1)
    # S and the committed RDP both grew by exactly one epoch's cost (rounded up).
    assert_charged(state[2], one_epoch)
    assert state[1] == state[2]

    finished = (await client.post(f"/v1/runs/{run['id']}/finish")).json()
    assert finished["status"] == "finished"
    kinds = [e["kind"] for e in (await client.get("/v1/datasets/mnist/ledger")).json()["items"]]
    assert kinds == ["charge"], "an epoch-mode run has nothing to release"


async def test_concurrent_reservation_stops_an_epoch_mode_run_where_the_rule_says(
    client, database_url
):
    dataset = await make_dataset(client, target_epsilon=3.0)
    orders, weights = dataset["orders"], dataset["weights"]
    cap = capacity(orders, weights, 3.0, 1e-5)
    # Run A pays per epoch (10 planned); after 3 epochs run B reserves 42 epochs up front.
    a = (await client.post("/v1/runs", json=run_body(name="a", reservation="epoch"))).json()
    for epoch in range(3):
        r = await client.post(f"/v1/runs/{a['id']}/epochs", json={"epoch": epoch})
        assert r.status_code == 200, r.text
    b = await client.post("/v1/runs", json=run_body(name="b", epochs=42))
    assert b.status_code == 201, b.text

    epoch_rdp = planned_rdp(orders, sample_rate=0.004, noise_multiplier=1.0, epochs=1)
    b_rdp = planned_rdp(orders, sample_rate=0.004, noise_multiplier=1.0, epochs=42)
    flags = simulate(cap, [epoch_rdp] * 3 + [b_rdp] + [epoch_rdp] * 7)
    assert flags[:4] == [True] * 4
    expected_stop = 3 + flags[4:].index(False)
    assert 3 < expected_stop < 10, "the scenario must stop A strictly inside its plan"

    for epoch in range(3, expected_stop):
        r = await client.post(f"/v1/runs/{a['id']}/epochs", json={"epoch": epoch})
        assert r.status_code == 200, (epoch, r.text)
    before = snapshot(database_url)
    refused = await client.post(f"/v1/runs/{a['id']}/epochs", json={"epoch": expected_stop})
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "budget_exceeded" and body["run_id"] == a["id"]
    assert snapshot(database_url) == before, "a refused epoch writes nothing"
    run = (await client.get(f"/v1/runs/{a['id']}")).json()
    assert run["epochs_charged"] == expected_stop


async def test_epoch_mode_admission_refuses_when_not_even_one_epoch_fits(client, database_url):
    await make_dataset(client, target_epsilon=0.3)
    before = snapshot(database_url)
    dry = await client.post("/v1/runs?dry_run=true", json=run_body(reservation="epoch"))
    assert dry.status_code == 409 and dry.json()["code"] == "budget_exceeded"
    assert snapshot(database_url) == before
    refused = await client.post("/v1/runs", json=run_body(reservation="epoch"))
    assert refused.status_code == 409
    assert snapshot(database_url)["datasets"] == before["datasets"]


async def test_unknown_reservation_mode_is_invalid_input(client, database_url):
    await make_dataset(client)
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json=run_body(reservation="sometimes"))
    assert response.status_code == 422 and response.json()["code"] == "invalid_input"
    assert snapshot(database_url) == before
