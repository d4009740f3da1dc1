"""Admission, charges, releases over the API, checked against an independent filter computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.ledger.rounding import RDP_RELATIVE_MARGIN
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from tests.integration.conftest import assert_charged, make_dataset, run_body, snapshot

pytestmark = pytest.mark.anyio


def capacity(orders, weights, epsilon, delta):
    """B(a) written out from the issue's formula, independently of app and dp_core."""
    a = np.asarray(orders)
    d = np.asarray(weights) * delta
    return epsilon - np.log(1 / d) / (a - 1) - np.log(1 - 1 / a) + np.log(a) / (a - 1)


def planned_rdp(orders, *, sample_rate, noise_multiplier, epochs):
    steps = math.ceil(1 / sample_rate) * epochs
    mechanism = SampledGaussianSchedule(
        sample_rate=sample_rate,
        schedule=NoiseSchedule(kind="constant", noise_multiplier=noise_multiplier),
        steps=steps,
    )
    return np.asarray(compute_rdp(mechanism, np.asarray(orders)))


async def test_admit_charge_finish_lifecycle(client, database_url):
    await make_dataset(client)
    created = await client.post("/v1/runs", json=run_body())
    assert created.status_code == 201
    run = created.json()
    assert (run["status"], run["epochs_charged"], run["steps_per_epoch"]) == ("admitted", 0, 250)

    first = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert first.status_code == 200
    before_retry = snapshot(database_url)
    retry = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert snapshot(database_url) == before_retry

    await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 1})
    fetched = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert (fetched["status"], fetched["epochs_charged"]) == ("running", 2)

    finished = await client.post(f"/v1/runs/{run['id']}/finish")
    assert finished.json()["status"] == "finished"
    again = await client.post(f"/v1/runs/{run['id']}/finish")
    assert again.json() == finished.json()

    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()
    assert [(e["kind"], e["epoch"]) for e in ledger["items"]] == [
        ("reservation", None),
        ("charge", 0),
        ("charge", 1),
        ("release", None),
    ]
    assert ledger["items"][1]["mechanism"]["mechanism"]["start_step"] == 0
    assert ledger["items"][2]["mechanism"]["mechanism"]["start_step"] == 250

    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    reserved = np.array([e["rdp"] for e in ledger["items"] if e["kind"] == "reservation"]).sum(0)
    released = np.array([e["rdp"] for e in ledger["items"] if e["kind"] == "release"]).sum(0)
    charged = np.array([e["rdp"] for e in ledger["items"] if e["kind"] == "charge"]).sum(0)
    rows = budget["orders"]
    np.testing.assert_allclose([r["rdp_reserved"] for r in rows], reserved - released, rtol=1e-9)
    np.testing.assert_allclose([r["rdp_committed"] for r in rows], charged, rtol=1e-9)
    # After the release, S is back to what was charged exactly: nothing is reserved on top.
    assert budget["epsilon_reserved"] == 0.0
    assert budget["runs"][0]["epochs_charged"] == 2
    # The run's two epochs, accounted in one piece, match the plain accountant's epsilon.
    assert budget["epsilon_non_adaptive"] == pytest.approx(budget["runs"][0]["epsilon_run"])
    assert fetched["epsilon_run"] == pytest.approx(budget["runs"][0]["epsilon_run"])


async def test_charges_are_rounded_up(client):
    await make_dataset(client, orders=[2.0, 8.0, 32.0], weights=[0.25, 0.25, 0.5])
    run = (await client.post("/v1/runs", json=run_body())).json()
    await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    entries = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    exact = planned_rdp([2.0, 8.0, 32.0], sample_rate=0.004, noise_multiplier=1.0, epochs=1)
    assert np.all(np.array(entries[1]["rdp"]) > exact)
    assert_charged(entries[1]["rdp"], exact)
    assert np.all(np.array(entries[0]["rdp"]) >= 10 * exact)


async def test_refuses_exactly_where_the_rule_says(client, database_url):
    """Admit identical runs until the independent filter says no; the service must agree."""
    orders, weights, eps, delta = [2.0, 4.0, 8.0, 16.0, 32.0], [0.2] * 5, 4.0, 1e-5
    await make_dataset(
        client, orders=orders, weights=weights, target_epsilon=eps, target_delta=delta
    )
    exact_x = planned_rdp(orders, sample_rate=0.004, noise_multiplier=1.0, epochs=3)
    # The ledger's rounded cost (never below the exact one), against the capacity it shows.
    x = exact_x * (1 + RDP_RELATIVE_MARGIN)
    b = capacity(orders, weights, eps, delta)
    s, alive, expected = np.zeros(len(orders)), np.ones(len(orders), bool), []
    for _ in range(40):
        fits = alive & (s + x <= b)
        expected.append(bool(fits.any()))
        if fits.any():
            s, alive = s + x, alive & (s + x <= b)
    assert expected[0] and not expected[-1]

    got = []
    for i in range(len(expected)):
        response = await client.post("/v1/runs", json=run_body(name=f"r{i}", epochs=3))
        assert response.status_code in (201, 409), response.text
        got.append(response.status_code == 201)
        if response.status_code == 409:
            body = response.json()
            assert body["code"] == "budget_exceeded"
            assert body["epsilon_projected"] > eps
            assert 0 <= body["epsilon_remaining"] < eps
    assert got == expected
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert [r["alive"] for r in budget["orders"]] == alive.tolist()
    admitted = sum(got)
    assert_charged(
        [r["rdp_reserved"] for r in budget["orders"]], admitted * exact_x, units=admitted
    )


async def test_release_never_revives_an_order(client):
    orders, weights, eps, delta = [2.0, 10.0], [0.5, 0.5], 3.0, 1e-5
    b = capacity(orders, weights, eps, delta)
    assert b[0] < 0 < b[1]  # order 2 cannot hold any spend at this target; order 10 can
    await make_dataset(client, orders=orders, weights=weights, target_epsilon=eps)
    run = (await client.post("/v1/runs", json=run_body(epochs=2))).json()
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert [r["alive"] for r in budget["orders"]] == [False, True]
    await client.post(f"/v1/runs/{run['id']}/finish")
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert [r["alive"] for r in budget["orders"]] == [False, True]
    assert [r["rdp_reserved"] for r in budget["orders"]] == pytest.approx([0.0, 0.0], abs=1e-12)


async def test_dry_run_answers_without_writing(client, database_url):
    await make_dataset(client)
    before = snapshot(database_url)
    preview = await client.post("/v1/runs", params={"dry_run": "true"}, json=run_body())
    assert preview.status_code == 200
    body = preview.json()
    assert body["admitted"] is True
    assert 0 < body["epsilon_projected"] <= 3.0
    assert body["epsilon_remaining"] == 3.0
    too_big = await client.post("/v1/runs", params={"dry_run": "true"}, json=run_body(epochs=500))
    assert too_big.status_code == 409
    assert too_big.json()["code"] == "budget_exceeded"
    assert snapshot(database_url) == before
    real = await client.post("/v1/runs", json=run_body())
    assert real.status_code == 201
    after = (await client.get("/v1/datasets/mnist/budget")).json()
    assert after["epsilon_spent"] + after["epsilon_reserved"] == pytest.approx(
        body["epsilon_projected"], rel=1e-9
    )


async def test_refused_run_is_recorded_but_changes_no_budget(client, database_url):
    await make_dataset(client)
    before = snapshot(database_url)
    refused = await client.post("/v1/runs", json=run_body(epochs=500))
    assert refused.status_code == 409
    run_id = refused.json()["run_id"]
    after = snapshot(database_url)
    assert after["datasets"] == before["datasets"]
    assert after["counts"]["ledger_entries"] == before["counts"]["ledger_entries"]
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "refused"
    charge = await client.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0})
    assert charge.status_code == 409
    assert charge.json()["code"] == "run_not_active"


@pytest.mark.parametrize(
    ("epoch", "code"),
    [(1, "epoch_out_of_order"), (10, "epoch_beyond_plan"), (99, "epoch_beyond_plan")],
)
async def test_epoch_conflicts_write_nothing(client, database_url, epoch, code):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    before = snapshot(database_url)
    response = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
    assert response.status_code == 409
    assert response.json()["code"] == code
    assert snapshot(database_url) == before


async def test_finished_run_cannot_be_charged_further(client, database_url):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    await client.post(f"/v1/runs/{run['id']}/finish")
    before = snapshot(database_url)
    retry = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert retry.status_code == 200  # the retry of a done charge still answers
    response = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 1})
    assert response.status_code == 409
    assert response.json()["code"] == "run_not_active"
    assert snapshot(database_url) == before


async def test_decaying_schedule_charges_follow_the_global_step(client):
    await make_dataset(client, target_epsilon=20.0)
    body = run_body(
        epochs=3, noise={"schedule": "exponential", "noise_multiplier": 2.0, "decay_rate": 1e-3}
    )
    run = (await client.post("/v1/runs", json=body)).json()
    for epoch in range(3):
        await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
    entries = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    charges = [np.array(e["rdp"]) for e in entries if e["kind"] == "charge"]
    # Later epochs have less noise, so they cost more at every order.
    assert np.all(charges[1] > charges[0]) and np.all(charges[2] > charges[1])
    total = np.sum(charges, axis=0)
    np.testing.assert_allclose(entries[0]["rdp"], total, rtol=1e-9)


async def test_ledger_pagination(client):
    await make_dataset(client, target_epsilon=50.0)
    run = (await client.post("/v1/runs", json=run_body())).json()
    for epoch in range(4):
        await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
    page = (await client.get("/v1/datasets/mnist/ledger", params={"limit": 2, "offset": 1})).json()
    assert page["total"] == 5
    assert [e["epoch"] for e in page["items"]] == [0, 1]
