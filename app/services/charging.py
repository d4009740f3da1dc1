"""Charging units (epochs, PATE batches) and finishing runs.

A charge is one short transaction: one statement authenticates the caller, locks the dataset
row, reads the run with its per-unit costs (fixed at admission) and its last charged unit; then
one INSERT writes the ledger entry, one UPDATE the dataset's budget state, and the commit. No
accounting math happens under the lock: :func:`app.ledger.transitions.charge` only adds integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from app.auth import Principal, hash_token
from app.db import read_transaction, write_transaction
from app.errors import NotFoundError
from app.ledger import quanta, transitions
from app.ledger.costs import UnitCosts
from app.ledger.plans import ChargeSpec
from app.ledger.transitions import EntryKind
from app.models import ApiToken, Dataset, LedgerEntry, Run
from app.observability import AdmissionLog, log_charge
from app.schemas import EpochChargeRead, MechanismKind, RunRead, RunStatus
from app.services.accounting import epsilon_of_rdp
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
class _Locked:
    run: Run
    dataset: Dataset
    principal: Principal
    charged: int


def _lock_statement(*, with_token: bool) -> Select[Any]:
    """Build once: run + dataset (+ the caller's live token) + last charged unit, FOR UPDATE OF
    datasets. Built at import, so a charge pays no statement construction."""
    charges = aliased(LedgerEntry)
    last = (
        select(func.max(charges.epoch))
        .where(charges.run_id == Run.id, charges.kind == EntryKind.charge.value)
        .scalar_subquery()
    )
    query = select(Run, Dataset, last).join(Dataset, Run.dataset_id == Dataset.id)
    if with_token:
        query = query.add_columns(ApiToken).join(
            ApiToken,
            (ApiToken.token_hash == bindparam("token_hash")) & ApiToken.revoked_at.is_(None),
        )
    return (
        query.where(Run.id == bindparam("run_id"))
        .with_for_update(of=Dataset)
        .execution_options(populate_existing=True)
    )


_LOCK_WITH_TOKEN = _lock_statement(with_token=True)
_LOCK = _lock_statement(with_token=False)


def _lock_for_charge(session: Session, run_id: int, caller: str | Principal | None) -> _Locked:
    """Authenticate, lock the dataset and read the run: one statement (FOR UPDATE OF datasets).

    ``caller`` is the bearer token of an HTTP request (checked in the same statement), or an
    already authenticated principal (local callers).
    """
    if caller is None or caller == "":
        authenticate(session, None)  # raises 401
    if isinstance(caller, str):
        params = {"run_id": run_id, "token_hash": hash_token(caller)}
        row = session.execute(_LOCK_WITH_TOKEN, params).first()
    else:
        row = session.execute(_LOCK, {"run_id": run_id}).first()
    if row is None:
        if isinstance(caller, str):
            authenticate(session, caller)  # 401 for an unknown token, else the run is missing
        raise NotFoundError(f"no run {run_id}")
    fields: tuple[Any, ...] = tuple(row)
    run, dataset, last = fields[0], fields[1], fields[2]
    principal = principal_of(fields[3]) if isinstance(caller, str) else caller
    assert isinstance(principal, Principal)
    principal.require_dataset_write(dataset.name)
    return _Locked(run, dataset, principal, 0 if last is None else int(last) + 1)


def _epsilon_run(dataset: Dataset, costs: UnitCosts, charged: int) -> float | None:
    rdp = quanta.to_floats_up(costs.total(0, charged))
    return epsilon_of_rdp(orders=dataset.orders, rdp=rdp, delta=dataset.target_delta)


def _existing(session: Session, locked: _Locked, unit: int, costs: UnitCosts) -> EpochChargeRead:
    entry = session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.run_id == locked.run.id,
            LedgerEntry.kind == EntryKind.charge.value,
            LedgerEntry.epoch == unit,
        )
    )
    if entry is None:  # a release charged at once has only unit 0
        raise NotFoundError(f"run {locked.run.id} has no charge for unit {unit}")
    return EpochChargeRead(
        run_id=locked.run.id,
        epoch=unit,
        ledger_entry_id=entry.id,
        created_at=entry.created_at,
        epsilon_run=_epsilon_run(locked.dataset, costs, unit + 1),
    )


#: Plans of recently charged runs: (stored spec, stored costs) -> parsed plan and costs. A run's
#: spec and costs never change after admission; the stored values are compared on every use, so
#: a stale entry can never be served. Cleared when full (bounded memory).
_PLANS: dict[int, tuple[Any, Any, ChargeSpec | None, UnitCosts]] = {}
_PLANS_MAX = 4096


def _plan_of(run: Run, orders: list[float]) -> tuple[ChargeSpec | None, UnitCosts]:
    """Return the run's plan (None for a black-box release: it has no RDP mechanism) and costs."""
    cached = _PLANS.get(run.id)
    if cached is not None and cached[0] == run.spec and cached[1] == run.costs:
        return cached[2], cached[3]
    black_box = run.kind == MechanismKind.approx_dp_release.value
    spec = None if black_box else run_spec(run)
    costs = run_costs(run, orders)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[run.id] = (run.spec, run.costs, spec, costs)
    return spec, costs


def charge_unit(
    session: Session, run_id: int, unit: int, caller: str | Principal | None
) -> EpochChargeRead:
    """Charge unit ``unit`` (an epoch, a PATE batch) before the caller starts it.

    From the run's reservation (``plan`` runs) or through the filter (``epoch`` runs: 409
    budget_exceeded when it does not fit). Idempotent per (run, unit): a retry finds the
    existing charge, returns it and writes nothing.
    """
    with write_transaction(session):
        locked = _lock_for_charge(session, run_id, caller)
        run, dataset = locked.run, locked.dataset
        spec, costs = _plan_of(run, list(dataset.orders))
        state = budget_state(dataset)
        step = transitions.charge(state, run_state(run, costs, locked.charged), unit)
        if step.refused:
            assert step.admission is not None
            refusal = step.admission
        elif not step.entries:
            return _existing(session, locked, unit, costs)
        else:
            refusal = None
            entry = step.entries[0]
            assert spec is not None  # a black-box release is charged once, at admission
            mechanism = entry_mechanism(spec, entry)
            # Core statements on the tables (no ORM bulk-persistence layer on the hot path).
            entries = cast(Table, LedgerEntry.__table__)
            datasets = cast(Table, Dataset.__table__)
            inserted = session.execute(
                insert(entries)
                .values(
                    dataset_id=dataset.id,
                    run_id=run.id,
                    kind=EntryKind.charge.value,
                    epoch=unit,
                    rdp=entry.cost,
                    mechanism=mechanism,
                    actor=locked.principal.actor,
                )
                .returning(entries.c.id, entries.c.created_at)
            ).one()
            entry_id, created_at = int(inserted[0]), cast(datetime, inserted[1])
            new = step.budget
            session.execute(
                update(datasets)
                .where(datasets.c.id == dataset.id)
                .values(
                    rdp_reserved=new.reserved, rdp_committed=new.committed, alive=list(new.alive)
                )
            )
    if refusal is not None:
        AdmissionLog(
            run_name=run.name,
            inputs={**(run.spec or {}), "reservation": run.reservation, "epoch": unit},
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
        epsilon_run=_epsilon_run(dataset, costs, unit + 1),
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
