"""Two service processes on one PostgreSQL database stay consistent (the dataset row lock).

This is the production layout with several replicas behind a load balancer: each replica is its own
process with its own connection pool, and only the database serialises them. Concurrent
reservations sent to both must admit exactly as many runs as the filter rule allows, and the ledger
must add up to the dataset's S.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ADMIN_TOKEN, auth, run_body
from tests.integration.server import Server
from tests.integration.test_server import DELTA, ORDERS, WEIGHTS, capacity, run_rdp, simulate

pytestmark = pytest.mark.anyio

ATTEMPTS, EPOCHS, EPSILON = 40, 5, 3.0


def _gauges(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("dataset", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("dpledger_dataset_epsilon_")
    }


def _refusals(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dpledger_refusals_total" and sample.labels["code"] == "budget_exceeded"
    )


@pytest.fixture
def two_servers(database_url, tmp_path):
    # Started one after the other: the first applies the migrations, the second finds them done.
    first = Server(database_url, tmp_path / "first.log").start()
    try:
        second = Server(database_url, tmp_path / "second.log").start()
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_processes_admit_exactly_what_fits(two_servers):
    x = run_rdp(EPOCHS)
    k, s, alive = simulate(x, capacity(EPSILON), ATTEMPTS)
    assert 3 <= k < ATTEMPTS // 2
    clients = [
        httpx.AsyncClient(base_url=server.url, headers=auth(ADMIN_TOKEN), timeout=60.0)
        for server in two_servers
    ]
    try:
        body = {
            "name": "mnist",
            "target_epsilon": EPSILON,
            "target_delta": DELTA,
            "orders": ORDERS,
            "weights": WEIGHTS,
        }
        assert (await clients[0].post("/v1/datasets", json=body)).status_code == 201
        responses = await asyncio.gather(
            *(
                clients[i % 2].post("/v1/runs", json=run_body(name=f"p{i}", epochs=EPOCHS))
                for i in range(ATTEMPTS)
            )
        )
        ledger = (await clients[1].get("/v1/datasets/mnist/ledger", params={"limit": 1000})).json()
        budgets = [(await c.get("/v1/datasets/mnist/budget")).json() for c in clients]
        scrapes = [(await c.get("/metrics")).text for c in clients]
    finally:
        for client in clients:
            await client.aclose()
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == k, statuses
    assert statuses.count(409) == ATTEMPTS - k
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"budget_exceeded"}
    reservations = [e for e in ledger["items"] if e["kind"] == "reservation"]
    assert len(reservations) == k
    total = np.sum([e["rdp"] for e in reservations], axis=0)
    assert budgets[0] == budgets[1]
    np.testing.assert_allclose([o["rdp_reserved"] for o in budgets[0]["orders"]], total, rtol=1e-9)
    np.testing.assert_allclose(total, s, rtol=1e-9)
    assert [o["alive"] for o in budgets[0]["orders"]] == alive.tolist()
    assert sum(r["status"] == "admitted" for r in budgets[0]["runs"]) == k
    # Gauges come from the database (identical on both); counters are per process (they add up).
    assert _gauges(scrapes[0]) == _gauges(scrapes[1])
    assert sum(_refusals(text) for text in scrapes) == ATTEMPTS - k
