"""Fixtures for API tests: one fresh database per test, on SQLite and (with DATABASE_URL) PostgreSQL.

PostgreSQL isolation: every test gets its own schema (``search_path`` set through the URL), which
is dropped afterwards, so tests never see each other's rows and need no cleanup order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from app.ledger import quanta
from app.ledger.rounding import RDP_ABSOLUTE_MARGIN, RDP_RELATIVE_MARGIN
from app.main import create_app
from app.models import Dataset, LedgerEntry, Run
from app.settings import Settings

ADMIN_TOKEN = "dpl_test_admin_token"


def _postgres_base_url() -> str | None:
    url = os.environ.get("DATABASE_URL")
    return url if url and url.startswith("postgresql") else None


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextmanager
def postgres_schema_url(base: str) -> Iterator[str]:
    """A URL to a new, empty PostgreSQL schema on the server ``base`` names (dropped after)."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conninfo = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield str(
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def empty_database_url(kind: str, directory: Path) -> AbstractContextManager[str]:
    """An empty database of ``kind`` (sqlite or postgresql); skips without DATABASE_URL."""
    if kind == "sqlite":
        return nullcontext(f"sqlite:///{directory / 'ledger.db'}")
    base = _postgres_base_url()
    if base is None:
        pytest.skip("PostgreSQL tests need DATABASE_URL=postgresql+psycopg://... (set by .ci/run)")
    return postgres_schema_url(base)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a new SQLite file, or a new PostgreSQL schema."""
    with empty_database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, bootstrap_token=ADMIN_TOKEN)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client talking to the app in-process (ASGITransport), lifespan included."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dpledger.test", headers=auth(ADMIN_TOKEN)
        ) as http:
            yield http


def snapshot(database_url: str) -> dict[str, Any]:
    """Row counts and the filter state of every dataset, read straight from the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            counts = {
                model.__tablename__: conn.scalar(select(func.count()).select_from(model))
                for model in (Dataset, Run, LedgerEntry)
            }
            states = [
                (
                    row.name,
                    quanta.to_floats_up(row.rdp_reserved).tolist(),
                    quanta.to_floats_up(row.rdp_committed).tolist(),
                    list(row.alive),
                )
                for row in conn.execute(select(Dataset).order_by(Dataset.id))
            ]
            charges = (
                select(func.count())
                .where(LedgerEntry.run_id == Run.id, LedgerEntry.kind == "charge")
                .scalar_subquery()
            )
            runs = [tuple(r) for r in conn.execute(select(Run.id, Run.status, charges))]
    finally:
        engine.dispose()
    return {"counts": counts, "datasets": states, "runs": runs}


def run_body(dataset: str = "mnist", **overrides: Any) -> dict[str, Any]:
    """A valid run request (workload 1 of the issue: q=0.004, sigma=1.0, 10 epochs)."""
    body: dict[str, Any] = {
        "dataset": dataset,
        "name": "run",
        "sample_rate": 0.004,
        "epochs": 10,
        "noise": {"schedule": "constant", "noise_multiplier": 1.0, "decay_rate": 0.0},
        "max_grad_norm": 1.0,
    }
    body.update(overrides)
    return body


async def make_dataset(
    client: httpx.AsyncClient, name: str = "mnist", **overrides: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "target_epsilon": 3.0, "target_delta": 1e-5}
    body.update(overrides)
    response = await client.post("/v1/datasets", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_charged(actual: Any, exact: Any, *, units: int = 1) -> None:
    """Assert that stored costs are the exact RDP rounded up by the ledger's stated margins.

    Never below the exact value (rounded toward privacy), and above it by no more than the
    margins of :mod:`app.ledger.rounding` (``units`` costs summed) plus float rounding.
    """
    got = np.asarray(actual, dtype=np.float64)
    want = np.asarray(exact, dtype=np.float64)
    assert np.all(got >= want), (got, want)
    slack = want * (2.0 * RDP_RELATIVE_MARGIN) + units * 2.0 * RDP_ABSOLUTE_MARGIN + 1e-300
    assert np.all(got <= want + slack), (got - want, slack)
