"""Black-box tests against a real uvicorn server: lifecycle, concurrency, restart, kill -9."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest

from app.ledger.rounding import RDP_RELATIVE_MARGIN
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from tests.integration.conftest import ADMIN_TOKEN, auth, run_body
from tests.integration.server import Server

pytestmark = pytest.mark.anyio

ORDERS, WEIGHTS, DELTA = [2.0, 4.0, 8.0, 16.0, 32.0], [0.2] * 5, 1e-5


def capacity(epsilon):
    a, d = np.asarray(ORDERS), np.asarray(WEIGHTS) * DELTA
    return epsilon - np.log(1 / d) / (a - 1) - np.log(1 - 1 / a) + np.log(a) / (a - 1)


def run_rdp(epochs, sample_rate=0.004, noise_multiplier=1.0):
    steps = math.ceil(1 / sample_rate) * epochs
    mech = SampledGaussianSchedule(
        sample_rate=sample_rate,
        schedule=NoiseSchedule(kind="constant", noise_multiplier=noise_multiplier),
        steps=steps,
    )
    # What the ledger charges: the exact RDP enlarged by its stated margin (app.ledger.rounding).
    return np.asarray(compute_rdp(mech, np.asarray(ORDERS))) * (1 + RDP_RELATIVE_MARGIN)


def simulate(x, b, attempts):
    """Apply the filter rule to identical requests, independently of the service."""
    s, alive, admitted = np.zeros_like(x), np.ones(x.shape, bool), 0
    for _ in range(attempts):
        if np.any(alive & (s + x <= b)):
            s, alive, admitted = s + x, alive & (s + x <= b), admitted + 1
    return admitted, s, alive


def admitted_count(x, b, attempts):
    return simulate(x, b, attempts)[0]


@pytest.fixture
def server(database_url, tmp_path):
    srv = Server(database_url, tmp_path / "server.log").start()
    yield srv
    srv.stop()


def _client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=auth(ADMIN_TOKEN), timeout=60.0)


async def _dataset(http, epsilon):
    body = {
        "name": "mnist",
        "target_epsilon": epsilon,
        "target_delta": DELTA,
        "orders": ORDERS,
        "weights": WEIGHTS,
    }
    assert (await http.post("/v1/datasets", json=body)).status_code == 201


async def test_lifecycle_against_real_server(server):
    eps = 4.0
    x_epoch, b = run_rdp(1), capacity(eps)
    async with _client(server) as http:
        await _dataset(http, eps)
        run = (await http.post("/v1/runs", json=run_body(epochs=4))).json()
        for epoch in range(4):
            assert (
                await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
            ).status_code == 200
        assert (await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 4})).json()[
            "code"
        ] == "epoch_beyond_plan"
        assert (await http.post(f"/v1/runs/{run['id']}/finish")).json()["status"] == "finished"
        # Keep admitting 4-epoch runs: the service must refuse exactly where the rule says.
        spent = 4 * x_epoch
        expected = admitted_count(4 * x_epoch, b - spent, 30)
        results = [
            (await http.post("/v1/runs", json=run_body(name=f"r{i}", epochs=4))).status_code
            for i in range(expected + 2)
        ]
        assert results == [201] * expected + [409, 409]
        budget = (await http.get("/v1/datasets/mnist/budget")).json()
        held = budget["epsilon_spent"] + budget["epsilon_reserved"]
        assert held <= eps < held + 1.0


async def test_fifty_concurrent_reservations(server):
    eps, attempts = 3.0, 50
    x = run_rdp(5)
    k, s, alive = simulate(x, capacity(eps), attempts)
    assert 3 <= k < attempts // 2
    async with _client(server) as http:
        await _dataset(http, eps)
        responses = await asyncio.gather(
            *(http.post("/v1/runs", json=run_body(name=f"c{i}", epochs=5)) for i in range(attempts))
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(201) == k
        assert statuses.count(409) == attempts - k
        ledger = (await http.get("/v1/datasets/mnist/ledger", params={"limit": 1000})).json()
        budget = (await http.get("/v1/datasets/mnist/budget")).json()
    reservations = [e for e in ledger["items"] if e["kind"] == "reservation"]
    assert len(reservations) == k
    total = np.sum([e["rdp"] for e in reservations], axis=0)
    np.testing.assert_allclose([o["rdp_reserved"] for o in budget["orders"]], total, rtol=1e-9)
    np.testing.assert_allclose(total, s, rtol=1e-9)
    assert [o["alive"] for o in budget["orders"]] == alive.tolist()
    assert sum(r["status"] == "admitted" for r in budget["runs"]) == k


async def test_state_survives_restart(database_url, tmp_path):
    server = Server(database_url, tmp_path / "server.log").start()
    try:
        async with _client(server) as http:
            await _dataset(http, 5.0)
            run = (await http.post("/v1/runs", json=run_body(epochs=5))).json()
            for epoch in range(2):
                await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
            before = (await http.get("/v1/datasets/mnist/budget")).json()
            ledger_before = (await http.get("/v1/datasets/mnist/ledger")).json()
        server.stop()
        server.start()
        async with _client(server) as http:
            assert (await http.get("/v1/datasets/mnist/budget")).json() == before
            assert (await http.get("/v1/datasets/mnist/ledger")).json() == ledger_before
            retry = (await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 1})).json()
            assert retry.pop("epsilon_run") == before["runs"][0]["epsilon_run"]
            assert retry == ledger_entry_answer(ledger_before, run["id"], 1)
            assert (
                await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 2})
            ).status_code == 200
    finally:
        server.stop()


def ledger_entry_answer(ledger, run_id, epoch):
    entry = next(e for e in ledger["items"] if e["kind"] == "charge" and e["epoch"] == epoch)
    return {
        "run_id": run_id,
        "epoch": epoch,
        "ledger_entry_id": entry["id"],
        "created_at": entry["created_at"],
    }


async def test_kill_9_during_charges_loses_nothing_committed(database_url, tmp_path):
    server = Server(database_url, tmp_path / "server.log").start()
    acknowledged: set[tuple[int, int]] = set()
    try:
        async with _client(server) as http:
            await _dataset(http, 1000.0)
            runs = [
                (await http.post("/v1/runs", json=run_body(name=f"k{i}", epochs=200))).json()["id"]
                for i in range(8)
            ]

            async def charge_forever(run_id: int) -> None:
                for epoch in range(200):
                    try:
                        response = await http.post(
                            f"/v1/runs/{run_id}/epochs", json={"epoch": epoch}
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code != 200:
                        return
                    acknowledged.add((run_id, epoch))

            tasks = [asyncio.create_task(charge_forever(r)) for r in runs]
            while len(acknowledged) < 40:
                await asyncio.sleep(0.01)
            server.kill()
            await asyncio.gather(*tasks)
        server.start()
        async with _client(server) as http:
            ledger = (await http.get("/v1/datasets/mnist/ledger", params={"limit": 1000})).json()
            budget = (await http.get("/v1/datasets/mnist/budget")).json()
            stored = {(e["run_id"], e["epoch"]) for e in ledger["items"] if e["kind"] == "charge"}
            assert acknowledged <= stored
            for run_id in runs:
                run = (await http.get(f"/v1/runs/{run_id}")).json()
                epochs = sorted(e for r, e in stored if r == run_id)
                assert epochs == list(range(run["epochs_charged"]))
            charges = [e["rdp"] for e in ledger["items"] if e["kind"] == "charge"]
            np.testing.assert_allclose(
                [o["rdp_committed"] for o in budget["orders"]], np.sum(charges, axis=0), rtol=1e-9
            )
            # The service keeps working after the crash.
            run = (await http.get(f"/v1/runs/{runs[0]}")).json()
            nxt = await http.post(
                f"/v1/runs/{runs[0]}/epochs", json={"epoch": run["epochs_charged"]}
            )
            assert nxt.status_code == 200
    finally:
        if server.process is not None:
            server.stop()
