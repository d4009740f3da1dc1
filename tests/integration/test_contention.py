"""Charges, finishes and retries racing each other under the dataset row lock (deterministic).

Another connection holds the dataset's lock (``SELECT ... FOR UPDATE`` on PostgreSQL, the write
lock of ``BEGIN IMMEDIATE`` on SQLite) while the requests under test queue behind it; on
PostgreSQL the test waits until they are seen waiting for the lock in ``pg_stat_activity``, so
they have read their snapshot before the holder's writes commit (the stale read of READ COMMITTED
that a charge must not act on). On SQLite the write lock is the whole database's, so a waiting
request reads after the holder commits whatever the timing: the same outcome is asserted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.auth import Principal, Role
from app.db import write_connection
from app.errors import RunNotActiveError
from app.ledger import quanta
from app.main import create_app
from app.models import Dataset, LedgerEntry, Run
from app.services import charging
from app.services.datasets import lock_dataset
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth
from tests.unit.dpledger.app_client import SyncASGITransport

ADMIN = Principal(token_id=1, name="holder", role=Role.admin, datasets=frozenset())


@pytest.fixture
def service(database_url: str) -> Iterator[tuple[httpx.Client, Engine]]:
    """A sync client on the real app (lifespan included) and the app's engine."""
    app = create_app(Settings(database_url=database_url, bootstrap_token=ADMIN_TOKEN))
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
        httpx.Client(
            transport=SyncASGITransport(app, portal),
            base_url="http://dpledger.test",
            headers=auth(ADMIN_TOKEN),
        ) as http,
    ):
        yield http, app.state.engine


def _open_run(http: httpx.Client, *, epochs: int = 3, reservation: str = "plan") -> int:
    http.post("/v1/datasets", json={"name": "mnist", "target_epsilon": 8.0, "target_delta": 1e-5})
    response = http.post(
        "/v1/runs",
        json={
            "dataset": "mnist",
            "name": "r",
            "sample_rate": 0.01,
            "epochs": epochs,
            "noise": {"noise_multiplier": 1.0},
            "reservation": reservation,
        },
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


@contextmanager
def _holding_lock(engine: Engine) -> Iterator[Session]:
    """Hold the dataset's lock in a write transaction (committed when the block ends)."""
    with write_connection(engine) as connection, Session(bind=connection) as session:
        dataset_id = session.scalars(select(Dataset.id)).one()
        lock_dataset(session, dataset_id)
        yield session
        session.flush()


def _lock_waiters(engine: Engine) -> int:
    """How many other sessions of this database wait for a lock (PostgreSQL only)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    with engine.connect() as connection:
        return int(connection.scalar(query) or 0)


def _wait_until_queued(engine: Engine, session: Session, waiters: int) -> None:
    """Return once ``waiters`` requests wait for the lock (PostgreSQL), or after a pause (SQLite)."""
    if engine.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 20.0
    while _lock_waiters(engine) < waiters:
        assert time.monotonic() < deadline, "the requests never queued behind the lock"
        time.sleep(0.02)


def _start(pool: ThreadPoolExecutor, call: Callable[[], Any]) -> Future[Any]:
    return pool.submit(call)


def _entries(engine: Engine, run_id: int) -> list[tuple[str, int | None, int | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(LedgerEntry.kind, LedgerEntry.epoch, LedgerEntry.id)
            .where(LedgerEntry.run_id == run_id)
            .order_by(LedgerEntry.id)
        )
        return [(kind, epoch, entry_id) for kind, epoch, entry_id in rows]


def _budget(engine: Engine) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    with engine.connect() as connection:
        row = connection.execute(select(Dataset.rdp_reserved, Dataset.rdp_committed)).one()
        return tuple(row[0]), tuple(row[1])


def test_a_charge_waiting_while_the_run_finishes_is_refused(service):
    """The finish commits while the charge waits for the lock: the charge must see it (409)."""
    http, engine = service
    run_id = _open_run(http)
    assert http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0}).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        with _holding_lock(engine) as holder:
            charge = _start(pool, lambda: charging.charge_unit(engine, run_id, 1, ADMIN_TOKEN))
            _wait_until_queued(engine, holder, 1)
            dataset_id = holder.scalars(select(Dataset.id)).one()
            finished = charging.finish_locked(holder, dataset_id, run_id, ADMIN.actor)
            assert finished.status == "finished"
        with pytest.raises(RunNotActiveError):
            charge.result(timeout=30)
    assert [(kind, epoch) for kind, epoch, _ in _entries(engine, run_id)] == [
        ("reservation", None),
        ("charge", 0),
        ("release", None),
    ]
    reserved, committed = _budget(engine)
    assert reserved == committed  # nothing left reserved: the release covered units 1 and 2
    retry = http.post(f"/v1/runs/{run_id}/finish")
    assert retry.status_code == 200 and retry.json()["epochs_charged"] == 1
    late = http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 1})
    assert late.status_code == 409 and late.json()["code"] == "run_not_active"


@pytest.mark.parametrize("reservation", ["plan", "epoch"])
def test_concurrent_retries_of_one_unit_get_the_same_entry(service, reservation):
    """Three copies of one charge queue behind the lock: one writes, all answer the same 200."""
    http, engine = service
    run_id = _open_run(http, reservation=reservation)
    copies = 3
    with ThreadPoolExecutor(copies) as pool:
        with _holding_lock(engine) as holder:
            charges = [
                _start(pool, lambda: charging.charge_unit(engine, run_id, 0, ADMIN_TOKEN))
                for _ in range(copies)
            ]
            _wait_until_queued(engine, holder, copies)
        results = [charge.result(timeout=30) for charge in charges]
    assert len({r.ledger_entry_id for r in results}) == 1
    assert len({r.epsilon_run for r in results}) == 1
    charges_stored = [e for e in _entries(engine, run_id) if e[0] == "charge"]
    assert [(kind, epoch) for kind, epoch, _ in charges_stored] == [("charge", 0)]
    assert charges_stored[0][2] == results[0].ledger_entry_id


def test_a_finish_waiting_behind_a_charge_releases_only_the_rest(service):
    """The charge commits while the finish waits: the release must leave the charged unit out."""
    http, engine = service
    run_id = _open_run(http)
    with ThreadPoolExecutor(1) as pool:
        with _holding_lock(engine) as holder:
            finish = _start(pool, lambda: http.post(f"/v1/runs/{run_id}/finish"))
            _wait_until_queued(engine, holder, 1)
            # The holder charges unit 0 as a charge would (same transaction, same lock).
            connection = holder.connection()
            locked = charging.lock_for_charge(connection, run_id, ADMIN)
            outcome = charging.charge_locked(connection, locked, 0)
            assert outcome.written is not None
        response = finish.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["epochs_charged"] == 1
    kinds = [(kind, epoch) for kind, epoch, _ in _entries(engine, run_id)]
    assert kinds == [("reservation", None), ("charge", 0), ("release", None)]
    reserved, committed = _budget(engine)
    assert reserved == committed
    with engine.connect() as connection:
        assert connection.scalar(select(Run.status).where(Run.id == run_id)) == "finished"
    assert quanta.to_floats_up(committed).max() > 0
