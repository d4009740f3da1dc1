"""Two service processes on one PostgreSQL database stay consistent (the dataset row lock).

A second test races opens, charges, finishes and retries across both processes and checks the
stored entries: no alive order's committed RDP exceeds its capacity, no charge follows a release,
and every acknowledged charge is stored once.

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
from sqlalchemy import create_engine, select

from app.ledger import quanta
from app.models import Dataset, LedgerEntry, Run
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
    first = Server(database_url, tmp_path / "first.log").start(timeout=90.0)
    try:
        second = Server(database_url, tmp_path / "second.log").start(timeout=90.0)
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


RACE_RUNS, RACE_EPOCHS = 10, 6


async def _charge_twice(clients, run_id: int, epoch: int, acked: dict) -> list[int]:
    """Send one charge to both servers at once (a retry racing the original)."""
    body = {"epoch": epoch}
    responses = await asyncio.gather(
        *(c.post(f"/v1/runs/{run_id}/epochs", json=body) for c in clients)
    )
    for response in responses:
        if response.status_code == 200:
            acked.setdefault((run_id, epoch), set()).add(response.json()["ledger_entry_id"])
    return [r.status_code for r in responses]


async def _drive(clients, run_id: int, finish_early: bool, acked: dict) -> list[int]:
    """Charge every epoch (twice each); some runs are finished mid-way, racing their charges."""
    statuses: list[int] = []
    for epoch in range(RACE_EPOCHS):
        if finish_early and epoch == RACE_EPOCHS // 2:
            finish = clients[1].post(f"/v1/runs/{run_id}/finish")
            charged, finished = await asyncio.gather(
                _charge_twice(clients, run_id, epoch, acked), finish
            )
            statuses += charged + [finished.status_code]
            continue
        statuses += await _charge_twice(clients, run_id, epoch, acked)
    finishes = await asyncio.gather(*(c.post(f"/v1/runs/{run_id}/finish") for c in clients))
    return statuses + [r.status_code for r in finishes]


def _stored(database_url: str):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            dataset = conn.execute(select(Dataset)).one()
            runs = {r.id: r for r in conn.execute(select(Run))}
            entries = conn.execute(select(LedgerEntry).order_by(LedgerEntry.id)).all()
    finally:
        engine.dispose()
    return dataset, runs, entries


def _check_stored(database_url: str, acked: dict) -> None:
    dataset, runs, entries = _stored(database_url)
    size = len(dataset.orders)
    committed = quanta.zeros(size)
    for entry in entries:
        if entry.kind == "charge":
            committed = quanta.add(committed, entry.rdp)
    assert committed == tuple(dataset.rdp_committed)
    assert any(dataset.alive)
    for alive, total, bound in zip(dataset.alive, committed, dataset.capacity, strict=True):
        assert not alive or (total is not None and total <= bound), "over capacity"
    for run_id in runs:
        mine = [e for e in entries if e.run_id == run_id]
        releases = [e for e in mine if e.kind == "release"]
        charges = [e for e in mine if e.kind == "charge"]
        assert len(releases) <= 1
        if releases:
            assert all(c.id < releases[0].id for c in charges), "a charge followed a release"
            reserved = next(e.rdp for e in mine if e.kind == "reservation")
            spent = quanta.zeros(size)
            for charge in charges:
                spent = quanta.add(spent, charge.rdp)
            assert quanta.subtract(reserved, releases[0].rdp) == spent
        assert sorted(c.epoch for c in charges) == list(range(len(charges)))
    by_key = {(e.run_id, e.epoch): e.id for e in entries if e.kind == "charge"}
    for key, ids in acked.items():
        assert ids == {by_key[key]}, (key, ids)  # acknowledged once, stored once, same entry


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_processes_race_opens_charges_finishes_and_retries(two_servers, database_url):
    """Bounded: 10 runs x 6 epochs, each charge sent to both servers, finishes racing charges."""
    clients = [
        httpx.AsyncClient(base_url=server.url, headers=auth(ADMIN_TOKEN), timeout=60.0)
        for server in two_servers
    ]
    acked: dict = {}
    try:
        body = {"name": "mnist", "target_epsilon": 4.0, "target_delta": DELTA}
        assert (await clients[0].post("/v1/datasets", json=body)).status_code == 201
        opens = await asyncio.gather(
            *(
                clients[i % 2].post(
                    "/v1/runs",
                    json=run_body(
                        name=f"r{i}",
                        epochs=RACE_EPOCHS,
                        reservation="plan" if i % 3 else "epoch",
                    ),
                )
                for i in range(RACE_RUNS)
            )
        )
        assert {r.status_code for r in opens} <= {201, 409}, [r.text for r in opens]
        admitted = [r.json()["id"] for r in opens if r.status_code == 201]
        assert admitted
        statuses = await asyncio.wait_for(
            asyncio.gather(
                *(_drive(clients, run_id, i % 2 == 0, acked) for i, run_id in enumerate(admitted))
            ),
            timeout=240,
        )
    finally:
        for client in clients:
            await client.aclose()
    flat = [status for run in statuses for status in run]
    assert set(flat) <= {200, 409}, flat  # never a 500, whatever raced
    assert acked
    _check_stored(database_url, acked)
