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

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm import Session

from app.auth import Principal, hash_token
from app.db import read_transaction, write_connection, write_transaction
from app.errors import ConflictError, InternalError, NotFoundError
from app.ledger import compatibility, readouts, transitions
from app.ledger.budget import Admission
from app.ledger.costs import UnitCosts
from app.ledger.plans import ChargeSpec
from app.ledger.transitions import EntryKind, Transition
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


def lock_for_charge(connection: Connection, run_id: int, caller: str | Principal | None) -> _Locked:
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


#: The guard of a charge's write, evaluated in the write statement's own snapshot: the run still
#: has the status and the last charged unit the decision was made on. The lock statement reads
#: them in the snapshot it took *before* waiting for the dataset lock (PostgreSQL READ COMMITTED
#: refreshes only the locked row after a wait), so a finish or a concurrent retry committed during
#: the wait would go unseen; the write statement starts after the lock is granted, and every writer
#: of a run's status or charges holds the dataset lock, so what it sees cannot change any more.
_LAST_UNIT = (
    select(func.coalesce(func.max(_ENTRIES.c.epoch), -1))
    .where(_ENTRIES.c.run_id == bindparam("p_run_id"), _ENTRIES.c.kind == EntryKind.charge.value)
    .scalar_subquery()
)
_UNCHANGED = exists().where(
    _RUNS.c.id == bindparam("p_run_id"), _RUNS.c.status == bindparam("p_status")
) & (bindparam("p_last") == _LAST_UNIT)
_ENTRY_VALUES = {
    "dataset_id": bindparam("p_dataset_id"),
    "run_id": bindparam("p_run_id"),
    "kind": literal(EntryKind.charge.value),
    "epoch": bindparam("p_unit"),
    "rdp": bindparam("p_rdp", type_=_ENTRIES.c.rdp.type),
    "mechanism": bindparam("p_mechanism", type_=_ENTRIES.c.mechanism.type),
    "created_at": bindparam("p_created_at", type_=_ENTRIES.c.created_at.type),
    "actor": bindparam("p_actor"),
}
_INSERT_ENTRY = (
    insert(_ENTRIES)
    .from_select(list(_ENTRY_VALUES), select(*_ENTRY_VALUES.values()).where(_UNCHANGED))
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
#: PostgreSQL: the guarded entry and the new state in one statement (data-modifying CTEs run
#: exactly once, in the statement's snapshot; the dataset row is already locked by this
#: transaction). The state is updated only when the entry was inserted.
_INSERTED = _INSERT_ENTRY.cte("inserted")
_WRITE_CHARGE = select(_INSERTED.c.id, _INSERTED.c.created_at).add_cte(
    _UPDATE_STATE.where(exists(select(_INSERTED.c.id))).returning(_DATASETS.c.id).cte("updated")
)


def _write_charge(connection: Connection, params: dict[str, Any]) -> tuple[int, datetime] | None:
    """Insert the charge's ledger entry and store the new budget state, if the run is unchanged.

    One round trip on PostgreSQL, two on SQLite (which has no data-modifying CTEs). None when the
    guard failed: the decision was made on a stale read and nothing was written.
    """
    if connection.dialect.name == "postgresql":
        row = connection.execute(_WRITE_CHARGE, params).first()
    else:
        row = connection.execute(_INSERT_ENTRY, params).first()
        if row is not None:
            connection.execute(_UPDATE_STATE, params)
    return None if row is None else (int(row[0]), cast(datetime, row[1]))


@dataclass(frozen=True)
class _Outcome:
    """What a charge decided under the lock: a written entry, a stored one, or a refusal."""

    locked: _Locked
    plan: _Plan
    written: tuple[int, datetime] | None = None
    existing: EpochChargeRead | None = None
    refusal: Admission | None = None


def _write_params(locked: _Locked, plan: _Plan, step: Transition, unit: int) -> dict[str, Any]:
    entry = step.entries[0]
    assert plan.spec is not None  # a black-box release is charged once, at admission
    new = step.budget
    return {
        "p_dataset_id": locked.dataset.id,
        "p_run_id": locked.run.id,
        "p_status": locked.run.status,
        "p_last": locked.charged - 1,
        "p_unit": unit,
        "p_rdp": entry.cost,
        "p_mechanism": entry_mechanism(plan.spec, entry),
        "p_created_at": utc_now(),
        "p_actor": locked.principal.actor,
        "p_reserved": new.reserved,
        "p_committed": new.committed,
        "p_alive": list(new.alive),
    }


def charge_locked(connection: Connection, locked: _Locked, unit: int) -> _Outcome:
    """Decide and write a charge while this transaction holds the dataset lock.

    The first decision uses the lock statement's read, which may be stale (see ``_UNCHANGED``):
    a write is guarded, and a refusal or an error is decided again on a fresh read (taken
    under the lock already held: it cannot be stale). The fast path stays one write statement.
    """
    for fresh in (False, True):
        if fresh:
            locked = lock_for_charge(connection, locked.run.id, locked.principal)
        plan = _plan_of(connection, locked.run, list(locked.dataset.orders))
        run = run_state(locked.run, plan.costs, locked.charged)
        try:
            step = transitions.charge(budget_state(locked.dataset), run, unit)
        except (ConflictError, ValueError):  # a stale read can break the ledger's preconditions
            if fresh:
                raise
            continue
        if step.refused:
            if fresh:
                return _Outcome(locked, plan, refusal=step.admission)
            continue
        if not step.entries:
            return _Outcome(locked, plan, existing=_existing(connection, locked, unit, plan.costs))
        written = _write_charge(connection, _write_params(locked, plan, step, unit))
        if written is not None:
            return _Outcome(locked, plan, written=written)
    raise InternalError("a charge read the run under the dataset lock and found it changed")


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
    existing charge, returns it and writes nothing, also when it raced the first request.
    """
    with write_connection(engine) as connection:
        locked = lock_for_charge(connection, run_id, caller)
        compatibility.check_unit_route(run_id=locked.run.id, kind=locked.run.kind, route=route)
        outcome = charge_locked(connection, locked, unit)
    if outcome.existing is not None:
        return outcome.existing
    locked, plan = outcome.locked, outcome.plan
    run, dataset = locked.run, locked.dataset
    if outcome.refusal is not None:
        AdmissionLog(
            run_name=run.name,
            inputs={**(plan.stored_spec or {}), "reservation": run.reservation, "epoch": unit},
            actor=locked.principal.actor,
            dry_run=False,
        ).log_decision(
            dataset=dataset.name, verdict=verdict(outcome.refusal, dataset.orders), run_id=run.id
        )
        raise budget_refusal(dataset.name, dataset.target_epsilon, outcome.refusal, run.id)
    assert outcome.written is not None
    entry_id, created_at = outcome.written
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
        return finish_locked(session, dataset_id, run_id, principal.actor)


def finish_locked(session: Session, dataset_id: int, run_id: int, actor: str) -> RunRead:
    """Finish a run inside the caller's write transaction: lock the dataset, then read the run.

    The run's status and charges are read *after* the lock is granted (separate statements, so
    fresh snapshots under READ COMMITTED): a charge committed while this waited is counted, and
    no release ever covers a unit that was charged.
    """
    dataset = lock_dataset(session, dataset_id)
    run = session.get_one(Run, run_id, populate_existing=True)
    charged = charged_units(session, [run_id]).get(run_id, 0)
    costs = run_costs(run, list(dataset.orders))
    step = transitions.finish(budget_state(dataset), run_state(run, costs, charged))
    if step.entries:
        store_budget_state(dataset, step.budget)
        write_entries(session, dataset, run, run_spec(run), step.entries, actor)
    run.status = RunStatus.finished.value
    session.flush()
    return run_to_read(run, dataset, charged)
