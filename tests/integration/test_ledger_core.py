"""The ledger core through the real service, on SQLite and PostgreSQL.

* Random sequences of admissions, partial charges, finishes, refusals and releases (hypothesis),
  with the invariants checked after every request on the stored rows, and the stored sums
  checked against exact sums of the ledger's own entries.
* A charge is one short transaction: its statements are counted with a SQLAlchemy event.
* The worst requests the default limits allow all come back (their timing is in bench/).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, select

from app.ledger import quanta
from app.main import create_app
from app.models import Dataset, LedgerEntry, Run
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth
from tests.unit.dpledger.app_client import SyncASGITransport

SCALE = 1 << quanta.QUANTUM_BITS
_names = itertools.count()


@pytest.fixture
def service(database_url: str) -> Iterator[tuple[httpx.Client, Any]]:
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


# --- invariants under random sequences -----------------------------------------------------------

NOISE = st.one_of(
    st.builds(
        lambda s: {"schedule": "constant", "noise_multiplier": s},
        st.sampled_from([0.7, 1.0, 1.3, 2.0]),
    ),
    st.builds(
        lambda s, k: {"schedule": "exponential", "noise_multiplier": s, "decay_rate": k},
        st.sampled_from([1.0, 1.5]),
        st.sampled_from([1e-4, 1e-3]),
    ),
)
MECHANISMS = st.one_of(
    st.builds(
        lambda noise, epochs: {
            "kind": "dp_sgd",
            "sample_rate": 0.02,
            "epochs": epochs,
            "noise": noise,
        },
        NOISE,
        st.integers(1, 4),
    ),
    st.builds(
        lambda queries, batch: {
            "kind": "pate",
            "aggregator": "gnmax",
            "noise_multiplier": 30.0,
            "queries": queries,
            "batch_size": batch,
        },
        st.integers(5, 300),
        st.integers(4, 120),  # usually an uneven last batch
    ),
    st.just({"kind": "gaussian_release", "sensitivity": 1.0, "noise_std": 3.0}),
    st.just({"kind": "laplace_release", "sensitivity": 1.0, "noise_scale": 2.0}),
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), MECHANISMS, st.sampled_from(["plan", "epoch"])),
        st.tuples(st.just("charge"), st.integers(0, 50), st.just(None)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.just(None)),
    ),
    min_size=5,
    max_size=25,
)


def _exact(vec: tuple[int | None, ...]) -> list[Fraction | None]:
    return [None if v is None else Fraction(v, SCALE) for v in vec]


def _sum(vectors: list[tuple[int | None, ...]], size: int) -> tuple[int | None, ...]:
    total: tuple[int | None, ...] = quanta.zeros(size)
    for v in vectors:
        total = quanta.add(total, v)
    return total


def check_invariants(engine: Any, name: str, http: httpx.Client) -> None:
    """committed <= reserved <= capacity (alive orders); stored sums = exact sums of entries."""
    with engine.connect() as conn:
        dataset = conn.execute(select(Dataset).where(Dataset.name == name)).one()
        runs = {r.id: r for r in conn.execute(select(Run).where(Run.dataset_id == dataset.id))}
        entries = conn.execute(
            select(LedgerEntry).where(LedgerEntry.dataset_id == dataset.id).order_by(LedgerEntry.id)
        ).all()
    size = len(dataset.orders)
    assert quanta.covered(dataset.rdp_committed, dataset.rdp_reserved)
    for alive, held, capacity in zip(
        dataset.alive, dataset.rdp_reserved, dataset.capacity, strict=True
    ):
        assert not alive or (held is not None and held <= capacity)
    charges = [e.rdp for e in entries if e.kind == "charge"]
    held = [e.rdp for e in entries if e.kind == "reservation"]
    held += [e.rdp for e in entries if e.kind == "charge" and runs[e.run_id].reservation != "plan"]
    held += [
        e.rdp for e in entries if e.kind == "charge" and runs[e.run_id].kind.endswith("release")
    ]
    released = [e.rdp for e in entries if e.kind == "release"]
    # Releases charged at once are plan runs too (reservation "plan" by default) without a
    # reservation entry: count each charge of a run that has no reservation entry exactly once.
    planned_runs = {e.run_id for e in entries if e.kind == "reservation"}
    held = [e.rdp for e in entries if e.kind == "reservation"] + [
        e.rdp for e in entries if e.kind == "charge" and e.run_id not in planned_runs
    ]
    assert dataset.rdp_committed == _sum(charges, size)
    assert _exact(dataset.rdp_reserved) == [
        None if a is None or b is None else a - b
        for a, b in zip(_exact(_sum(held, size)), _exact(_sum(released, size)), strict=True)
    ]
    for run_id in planned_runs:
        if runs[run_id].status == "finished":
            mine = [e for e in entries if e.run_id == run_id]
            reserved = _sum([e.rdp for e in mine if e.kind == "reservation"], size)
            back = _sum([e.rdp for e in mine if e.kind == "release"], size)
            assert quanta.subtract(reserved, back) == _sum(
                [e.rdp for e in mine if e.kind == "charge"], size
            ), "a finished run's reservation equals its charges"
    budget = http.get(f"/v1/datasets/{name}/budget").json()
    assert (
        budget["epsilon_spent"] is not None and budget["epsilon_spent"] <= budget["target_epsilon"]
    )
    total = budget["epsilon_spent"] + budget["epsilon_reserved"] + budget["epsilon_remaining"]
    assert total == pytest.approx(
        budget["target_epsilon"] - budget["approx_dp"]["epsilon_remaining"], abs=1e-9
    )


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=OPERATIONS)
def test_random_sequences_keep_the_invariants(service, operations):
    http, engine = service
    name = f"ds{next(_names)}"
    assert (
        http.post(
            "/v1/datasets", json={"name": name, "target_epsilon": 6.0, "target_delta": 1e-5}
        ).status_code
        == 201
    )
    runs: list[dict[str, Any]] = []
    for op, arg, mode in operations:
        if op == "open":
            body = {"dataset": name, "name": "r", "mechanism": arg, "reservation": mode}
            response = http.post("/v1/runs", json=body)
            assert response.status_code in (201, 409), response.text
            if response.status_code == 201:
                runs.append(response.json())
        elif runs:
            run = runs[arg % len(runs)]
            if op == "charge":
                current = http.get(f"/v1/runs/{run['id']}").json()
                path = "batches" if run["kind"] == "pate" else "epochs"
                field = "batch" if run["kind"] == "pate" else "epoch"
                response = http.post(
                    f"/v1/runs/{run['id']}/{path}", json={field: current["epochs_charged"]}
                )
                assert response.status_code in (200, 409), response.text
            else:
                response = http.post(f"/v1/runs/{run['id']}/finish")
                assert response.status_code in (200, 409), response.text
        check_invariants(engine, name, http)


# --- a charge is one short transaction -----------------------------------------------------------


def _statements_of(engine: Any, action: Any) -> list[str]:
    """Return the first word of every statement ``action`` sends (BEGIN left out), and COMMITs."""
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        if not statement.lstrip().upper().startswith("BEGIN"):
            statements.append(statement.split()[0].upper())

    def commit(_conn):
        statements.append("COMMIT")

    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "commit", commit)
    try:
        assert action().status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "commit", commit)
    return statements


def test_an_epoch_charge_makes_at_most_four_round_trips(service):
    """authenticate + lock + read the run (1 statement), insert + update (1 statement on
    PostgreSQL, a data-modifying CTE; 2 on SQLite), commit (1).

    The transaction's BEGIN is not counted: psycopg opens it implicitly with the first
    statement; SQLite's ``BEGIN IMMEDIATE`` is the same step made explicit.
    """
    http, engine = service
    http.post("/v1/datasets", json={"name": "mnist", "target_epsilon": 8.0, "target_delta": 1e-5})
    for reservation in ("plan", "epoch"):
        run = http.post(
            "/v1/runs",
            json={
                "dataset": "mnist",
                "name": reservation,
                "sample_rate": 0.01,
                "epochs": 3,
                "noise": {"noise_multiplier": 1.0},
                "reservation": reservation,
            },
        ).json()
        assert http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0}).status_code == 200
        statements = _statements_of(
            engine, lambda run=run: http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 1})
        )
        expected = (
            ["SELECT", "WITH", "COMMIT"]
            if engine.dialect.name == "postgresql"
            else ["SELECT", "INSERT", "UPDATE", "COMMIT"]
        )
        assert statements == expected, (reservation, statements)


def test_a_revoked_or_unknown_token_cannot_charge(service):
    http, _ = service
    http.post("/v1/datasets", json={"name": "mnist", "target_epsilon": 8.0, "target_delta": 1e-5})
    run = http.post(
        "/v1/runs",
        json={
            "dataset": "mnist",
            "name": "r",
            "sample_rate": 0.01,
            "epochs": 2,
            "noise": {"noise_multiplier": 1.0},
        },
    ).json()
    unknown = http.post(
        f"/v1/runs/{run['id']}/epochs",
        json={"epoch": 0},
        headers=auth("dpl_nobody_0123456789abcdef0123456789"),
    )
    assert unknown.status_code == 401 and unknown.json()["code"] == "unauthorized"
    missing = http.post("/v1/runs/999/epochs", json={"epoch": 0})
    assert missing.status_code == 404
    assert http.get(f"/v1/runs/{run['id']}").json()["epochs_charged"] == 0


# --- bounded work --------------------------------------------------------------------------------


def test_the_worst_requests_the_limits_allow_come_back(service):
    """Each is answered (admitted, refused or 422 naming the limit); timings: bench/service.py."""
    http, _ = service
    http.post("/v1/datasets", json={"name": "big", "target_epsilon": 1000.0, "target_delta": 1e-5})
    levels = Settings().max_noise_levels
    worst_pate = {
        "kind": "pate",
        "aggregator": "gnmax",
        "noise_multiplier": 1e4,
        "queries": 100_000_000,
        "batch_size": 1,
    }
    response = http.post(
        "/v1/runs", json={"dataset": "big", "name": "pate", "mechanism": worst_pate}
    )
    assert response.status_code in (201, 409), response.text
    decaying = {"schedule": "exponential", "noise_multiplier": 5.0, "decay_rate": 1e-7}
    at_limit = {
        "dataset": "big",
        "name": "d",
        "sample_rate": 0.01,
        "steps_per_epoch": 10,
        "epochs": levels // 10,
        "noise": decaying,
    }
    assert http.post("/v1/runs", json=at_limit).status_code in (201, 409)
    over = {**at_limit, "epochs": levels // 10 + 1}
    refused = http.post("/v1/runs", json=over)
    assert refused.status_code == 422 and "DPLEDGER_MAX_NOISE_LEVELS" in refused.json()["message"]
    tiny = http.post(
        "/v1/accountant/epsilon",
        json={"sample_rate": 0.01, "noise_multiplier": 1e-300, "steps": 10, "delta": 1e-5},
    )
    assert tiny.status_code == 422
    long_epsilon = {
        "sample_rate": 0.01,
        "noise_multiplier": 1.0,
        "steps": 10**6,
        "delta": 1e-5,
        "schedule": "exponential",
        "decay_rate": 1e-6,
    }
    assert http.post("/v1/accountant/epsilon", json=long_epsilon).status_code == 422
    assert (
        http.post("/v1/accountant/epsilon", json={**long_epsilon, "steps": levels}).status_code
        == 200
    )
    calibrate = {
        "target_epsilon": 5.0,
        "delta": 1e-5,
        "sample_rate": 0.01,
        "steps": levels // 2,
        "schedule": "exponential",
        "decay_rate": 1e-6,
    }
    assert http.post("/v1/accountant/noise-multiplier", json=calibrate).status_code == 200
    constant = {
        "target_epsilon": 1000.0,
        "delta": 1e-5,
        "sample_rate": 1e-6,
        "noise_multiplier": 1e6,
    }
    assert http.post("/v1/accountant/max-steps", json=constant).status_code == 200
