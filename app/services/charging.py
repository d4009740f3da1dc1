"""Charging units (epochs, PATE batches) and finishing runs.

A charge is one short transaction on a bare Core connection: one statement authenticates the
caller, locks the dataset row, reads the run and its last charged unit (the run's per-unit costs,
fixed at admission, are read once per process); then one statement writes the ledger entry and
the dataset's budget state (an INSERT and an UPDATE on SQLite), and the commit. No accounting
math happens under the lock: :func:`app.ledger.transitions.charge` only adds integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Select, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from app.auth import Principal, hash_token
from app.db import read_transaction, write_connection, write_transaction
from app.errors import NotFoundError
from app.ledger import compatibility, readouts, transitions
from app.ledger.costs import UnitCosts
from app.ledger.plans import ChargeSpec
from app.ledger.transitions import EntryKind
from app.models import ApiToken, Dataset, LedgerEntry, Run, utc_now
from app.observability import AdmissionLog, log_charge
from app.schemas import EpochChargeRead, MechanismKind, RunRead, RunStatus
from app.services.admission import budget_refusal, verdict
from app.services.datasets import budget_state, lock_dataset, store_budget_state
from app.services.ledger_writes import entry_mechanism, write_entries
from app.services.runs import (
    charged_units,
    find_run,
    run_costs,
    run_spec,
    run_state,
    run_to_read,
)
from app.services.tokens import authenticate, principal_of


@dataclass(frozen=True)
class _Plan:
    """What a charge needs of a run beyond its lock row; fixed at admission, so cacheable."""

    spec: ChargeSpec | None  # None for a black-box release (it has no RDP mechanism)
    costs: UnitCosts
    stored_spec: dict[str, Any] | None


@dataclass(frozen=True)
class _Locked:
    run: Run  # transient: the columns a charge reads (status, kind, name), not session-bound
    dataset: Dataset  # transient: the budget columns, read under the lock
    principal: Principal
    charged: int


_RUNS = cast(Table, Run.__table__)
_DATASETS = cast(Table, Dataset.__table__)
_TOKENS = cast(Table, ApiToken.__table__)
_ENTRIES = cast(Table, LedgerEntry.__table__)

#: The columns a charge reads under the lock: the run's identity and status, the dataset's budget
#: state, the caller's token. Fewer columns than whole rows: less to send, decode and build.
_RUN_COLUMNS = ("id", "dataset_id", "name", "kind", "reservation", "status", "created_at")
_DATASET_COLUMNS = (
    "id",
    "name",
    "target_epsilon",
    "target_delta",
    "approx_epsilon",
    "approx_delta",
    "orders",
    "capacity",
    "rdp_reserved",
    "rdp_committed",
    "alive",
)
_TOKEN_COLUMNS = ("id", "name", "role", "datasets")


def _lock_statement(*, with_token: bool) -> Select[Any]:
    """Build once: run + dataset (+ the caller's live token) + last charged unit, FOR UPDATE OF
    datasets. Core columns, not ORM entities: a charge builds no statement and loads no objects."""
    last = (
        select(func.max(_ENTRIES.c.epoch))
        .where(_ENTRIES.c.run_id == _RUNS.c.id, _ENTRIES.c.kind == EntryKind.charge.value)
        .scalar_subquery()
    )
    columns = [_RUNS.c[name].label(f"run_{name}") for name in _RUN_COLUMNS]
    columns += [_DATASETS.c[name].label(f"dataset_{name}") for name in _DATASET_COLUMNS]
    columns.append(last.label("last_unit"))
    query = select(*columns).join(_DATASETS, _RUNS.c.dataset_id == _DATASETS.c.id)
    if with_token:
        query = query.add_columns(
            *(_TOKENS.c[name].label(f"token_{name}") for name in _TOKEN_COLUMNS)
        ).join(
            _TOKENS,
            (_TOKENS.c.token_hash == bindparam("token_hash")) & _TOKENS.c.revoked_at.is_(None),
        )
    return query.where(_RUNS.c.id == bindparam("run_id")).with_for_update(of=_DATASETS)


_LOCK_WITH_TOKEN = _lock_statement(with_token=True)
_LOCK = _lock_statement(with_token=False)


def _fields(row: Any, prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    mapping = row._mapping
    return {name: mapping[f"{prefix}_{name}"] for name in names}


def _authenticate(connection: Connection, token: str | None) -> Principal:
    """Authenticate through the ORM (rare paths only: a missing run or an unknown token)."""
    with Session(bind=connection) as session:
        return authenticate(session, token)


def _lock_for_charge(
    connection: Connection, run_id: int, caller: str | Principal | None
) -> _Locked:
    """Authenticate, lock the dataset and read the run: one statement (FOR UPDATE OF datasets).

    ``caller`` is the bearer token of an HTTP request (checked in the same statement), or an
    already authenticated principal (local callers).
    """
    if caller is None or caller == "":
        _authenticate(connection, None)  # raises 401
    if isinstance(caller, str):
        params = {"run_id": run_id, "token_hash": hash_token(caller)}
        row = connection.execute(_LOCK_WITH_TOKEN, params).first()
    else:
        row = connection.execute(_LOCK, {"run_id": run_id}).first()
    if row is None:
        if isinstance(caller, str):
            _authenticate(connection, caller)  # 401 for an unknown token, else the run is missing
        raise NotFoundError(f"no run {run_id}")
    principal = (
        principal_of(ApiToken(**_fields(row, "token", _TOKEN_COLUMNS)))
        if isinstance(caller, str)
        else caller
    )
    assert isinstance(principal, Principal)
    dataset = Dataset(**_fields(row, "dataset", _DATASET_COLUMNS))
    principal.require_dataset_write(dataset.name)
    run = Run(**_fields(row, "run", _RUN_COLUMNS))
    last = row._mapping["last_unit"]
    return _Locked(run, dataset, principal, 0 if last is None else int(last) + 1)


def _epsilon_run(dataset: Dataset, costs: UnitCosts, charged: int) -> float | None:
    return readouts.run_epsilon(
        orders=dataset.orders, costs=costs, units=charged, delta=dataset.target_delta
    ).epsilon


def _existing(
    connection: Connection, locked: _Locked, unit: int, costs: UnitCosts
) -> EpochChargeRead:
    entry = connection.execute(
        select(_ENTRIES.c.id, _ENTRIES.c.created_at).where(
            _ENTRIES.c.run_id == locked.run.id,
            _ENTRIES.c.kind == EntryKind.charge.value,
            _ENTRIES.c.epoch == unit,
        )
    ).first()
    if entry is None:  # a release charged at once has only unit 0
        raise NotFoundError(f"run {locked.run.id} has no charge for unit {unit}")
    return EpochChargeRead(
        run_id=locked.run.id,
        epoch=unit,
        ledger_entry_id=int(entry[0]),
        created_at=cast(datetime, entry[1]),
        epsilon_run=_epsilon_run(locked.dataset, costs, unit + 1),
    )


#: Plans of recently charged runs, keyed by (engine, run id, creation time, name). A run's spec
#: and costs never change after admission and runs are never deleted, so within one database the
#: key names one run forever; the engine and the creation time keep a run of another database
#: (tests make many) from being served. Cleared when full (bounded memory).
_PlanKey = tuple[int, int, datetime, str]
_PLANS: dict[_PlanKey, _Plan] = {}
_PLANS_MAX = 4096


def _plan_of(connection: Connection, run: Run, orders: list[float]) -> _Plan:
    """Return the run's plan and per-unit costs (read and parsed once per run and process)."""
    key = (id(connection.engine), run.id, run.created_at, run.name)
    cached = _PLANS.get(key)
    if cached is not None:
        return cached
    with Session(bind=connection) as session:
        stored = session.get_one(Run, run.id)
    black_box = stored.kind == MechanismKind.approx_dp_release.value
    plan = _Plan(
        spec=None if black_box else run_spec(stored),
        costs=run_costs(stored, orders),
        stored_spec=stored.spec,
    )
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


_INSERT_ENTRY = (
    insert(_ENTRIES)
    .values(
        dataset_id=bindparam("p_dataset_id"),
        run_id=bindparam("p_run_id"),
        kind=EntryKind.charge.value,
        epoch=bindparam("p_unit"),
        rdp=bindparam("p_rdp", type_=_ENTRIES.c.rdp.type),
        mechanism=bindparam("p_mechanism", type_=_ENTRIES.c.mechanism.type),
        created_at=bindparam("p_created_at", type_=_ENTRIES.c.created_at.type),
        actor=bindparam("p_actor"),
    )
    .returning(_ENTRIES.c.id, _ENTRIES.c.created_at)
)
_UPDATE_STATE = (
    update(_DATASETS)
    .where(_DATASETS.c.id == bindparam("p_dataset_id"))
    .values(
        rdp_reserved=bindparam("p_reserved", type_=_DATASETS.c.rdp_reserved.type),
        rdp_committed=bindparam("p_committed", type_=_DATASETS.c.rdp_committed.type),
        alive=bindparam("p_alive", type_=_DATASETS.c.alive.type),
    )
)
#: PostgreSQL: the entry and the new state in one statement (data-modifying CTEs run exactly
#: once, in the statement's snapshot; the dataset row is already locked by this transaction).
_INSERTED = _INSERT_ENTRY.cte("inserted")
_WRITE_CHARGE = select(_INSERTED.c.id, _INSERTED.c.created_at).add_cte(
    _UPDATE_STATE.returning(_DATASETS.c.id).cte("updated")
)


def _write_charge(connection: Connection, params: dict[str, Any]) -> tuple[int, datetime]:
    """Insert the charge's ledger entry and store the new budget state: one round trip on
    PostgreSQL, two on SQLite (which has no data-modifying CTEs)."""
    if connection.dialect.name == "postgresql":
        row = connection.execute(_WRITE_CHARGE, params).one()
    else:
        row = connection.execute(_INSERT_ENTRY, params).one()
        connection.execute(_UPDATE_STATE, params)
    return int(row[0]), cast(datetime, row[1])


def charge_unit(
    engine: Engine,
    run_id: int,
    unit: int,
    caller: str | Principal | None,
    *,
    route: str = "epochs",
) -> EpochChargeRead:
    """Charge unit ``unit`` (an epoch, a PATE batch) before the caller starts it.

    From the run's reservation (``plan`` runs) or through the filter (``epoch`` runs: 409
    budget_exceeded when it does not fit). Idempotent per (run, unit): a retry finds the
    existing charge, returns it and writes nothing.
    """
    with write_connection(engine) as connection:
        locked = _lock_for_charge(connection, run_id, caller)
        run, dataset = locked.run, locked.dataset
        compatibility.check_unit_route(run_id=run.id, kind=run.kind, route=route)
        plan = _plan_of(connection, run, list(dataset.orders))
        state = budget_state(dataset)
        step = transitions.charge(state, run_state(run, plan.costs, locked.charged), unit)
        if step.refused:
            assert step.admission is not None
            refusal = step.admission
        elif not step.entries:
            return _existing(connection, locked, unit, plan.costs)
        else:
            refusal = None
            entry = step.entries[0]
            assert plan.spec is not None  # a black-box release is charged once, at admission
            new = step.budget
            entry_id, created_at = _write_charge(
                connection,
                {
                    "p_dataset_id": dataset.id,
                    "p_run_id": run.id,
                    "p_unit": unit,
                    "p_rdp": entry.cost,
                    "p_mechanism": entry_mechanism(plan.spec, entry),
                    "p_created_at": utc_now(),
                    "p_actor": locked.principal.actor,
                    "p_reserved": new.reserved,
                    "p_committed": new.committed,
                    "p_alive": list(new.alive),
                },
            )
    if refusal is not None:
        AdmissionLog(
            run_name=run.name,
            inputs={**(plan.stored_spec or {}), "reservation": run.reservation, "epoch": unit},
            actor=locked.principal.actor,
            dry_run=False,
        ).log_decision(
            dataset=dataset.name, verdict=verdict(refusal, dataset.orders), run_id=run.id
        )
        raise budget_refusal(dataset.name, dataset.target_epsilon, refusal, run.id)
    log_charge(
        dataset=dataset.name,
        run_id=run_id,
        epoch=unit,
        ledger_entry_id=entry_id,
        actor=locked.principal.actor,
    )
    return EpochChargeRead(
        run_id=run_id,
        epoch=unit,
        ledger_entry_id=entry_id,
        created_at=created_at,
        epsilon_run=_epsilon_run(dataset, plan.costs, unit + 1),
    )


def finish_run(session: Session, run_id: int, principal: Principal) -> RunRead:
    """Finish a run, releasing the reservation of the units it never started (idempotent)."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_write(dataset.name)
        dataset_id = dataset.id
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        run = session.get_one(Run, run_id, populate_existing=True)
        charged = charged_units(session, [run_id]).get(run_id, 0)
        costs = run_costs(run, list(dataset.orders))
        step = transitions.finish(budget_state(dataset), run_state(run, costs, charged))
        if step.entries:
            store_budget_state(dataset, step.budget)
            write_entries(session, dataset, run, run_spec(run), step.entries, principal.actor)
        run.status = RunStatus.finished.value
        session.flush()
        return run_to_read(run, dataset, charged)
