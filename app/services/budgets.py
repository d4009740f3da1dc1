"""Reading a dataset's budget (through the filter) and its ledger."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction
from app.models import Dataset, FloatArray, LedgerEntry, Run
from app.schemas import (
    BudgetRead,
    EntryKind,
    KindSpend,
    LedgerEntryList,
    LedgerEntryRead,
    MechanismKind,
    OrderHeadroom,
    RunBudget,
    RunStatus,
)
from app.services.accounting import add_up, epsilon_of_rdp
from app.services.admission_filter import epsilon_remaining, filter_epsilon
from app.services.datasets import approx_dp_budget, filter_state, find_dataset


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _committed_by_run(session: Session, dataset: Dataset) -> dict[int, FloatArray]:
    totals: dict[int, FloatArray] = defaultdict(lambda: np.zeros(len(dataset.orders)))
    charges = session.execute(
        select(LedgerEntry.run_id, LedgerEntry.rdp)
        .where(LedgerEntry.dataset_id == dataset.id, LedgerEntry.kind == EntryKind.charge.value)
        .order_by(LedgerEntry.id)
    )
    for run_id, rdp in charges:
        totals[run_id] = add_up(totals[run_id], rdp)
    return totals


def _order_rows(dataset: Dataset) -> list[OrderHeadroom]:
    headroom = dataset.capacity - dataset.rdp_reserved
    return [
        OrderHeadroom(
            order=float(order),
            weight=float(weight),
            capacity=float(dataset.capacity[i]),
            rdp_committed=_finite(float(dataset.rdp_committed[i])),
            rdp_reserved=_finite(float(dataset.rdp_reserved[i])),
            headroom=_finite(float(headroom[i])),
            alive=bool(dataset.alive[i]),
        )
        for i, (order, weight) in enumerate(zip(dataset.orders, dataset.weights, strict=True))
    ]


def _spend_by_kind(
    dataset: Dataset, runs: list[Run], committed: dict[int, FloatArray]
) -> list[KindSpend]:
    """Per mechanism kind: its runs and the epsilon of its committed charges alone."""
    rows = []
    for kind in MechanismKind:
        of_kind = [run for run in runs if run.kind == kind.value]
        if not of_kind:
            continue
        if kind is MechanismKind.approx_dp_release:
            epsilon: float | None = dataset.approx_epsilon_spent
        else:
            total = np.zeros(len(dataset.orders))
            for run in of_kind:
                if run.id in committed:
                    total = add_up(total, committed[run.id])
            epsilon = epsilon_of_rdp(orders=dataset.orders, rdp=total, delta=dataset.target_delta)
        rows.append(KindSpend(kind=kind, runs=len(of_kind), epsilon_committed=epsilon))
    return rows


@dataclass(frozen=True)
class Headline:
    """A dataset's headline epsilons: the filter's, plus what black-box releases spent."""

    spent: float
    reserved: float
    remaining: float


def headline(dataset: Dataset) -> Headline:
    """Return spent/reserved (inf when no order is left) and remaining for RDP mechanisms.

    The one definition behind the budget endpoint, the dashboard, /metrics and the CLI.
    """
    state = filter_state(dataset)
    return Headline(
        spent=filter_epsilon(state, dataset.rdp_committed) + dataset.approx_epsilon_spent,
        reserved=filter_epsilon(state, dataset.rdp_reserved) + dataset.approx_epsilon_spent,
        remaining=epsilon_remaining(state),
    )


def get_budget(session: Session, name: str, principal: Principal) -> BudgetRead:
    """Return where the dataset's budget stands."""
    principal.require_dataset_read(name)
    with read_transaction(session):
        dataset = find_dataset(session, name)
        numbers = headline(dataset)
        runs_list = list(
            session.scalars(select(Run).where(Run.dataset_id == dataset.id).order_by(Run.id))
        )
        committed = _committed_by_run(session, dataset)
        zero = np.zeros(len(dataset.orders))
        run_rows = [
            RunBudget(
                id=run.id,
                name=run.name,
                kind=MechanismKind(run.kind),
                status=RunStatus(run.status),
                epochs=run.epochs,
                epochs_charged=run.epochs_charged,
                epsilon_committed=epsilon_of_rdp(
                    orders=dataset.orders,
                    rdp=committed.get(run.id, zero),
                    delta=dataset.target_delta,
                ),
            )
            for run in runs_list
        ]
        return BudgetRead(
            dataset=dataset.name,
            target_epsilon=dataset.target_epsilon,
            target_delta=dataset.target_delta,
            epsilon_spent=_finite(numbers.spent),
            epsilon_reserved=_finite(numbers.reserved),
            epsilon_remaining=numbers.remaining,
            epsilon_non_adaptive=epsilon_of_rdp(
                orders=dataset.orders, rdp=dataset.rdp_committed, delta=dataset.target_delta
            ),
            runs=run_rows,
            by_kind=_spend_by_kind(dataset, runs_list, committed),
            approx_dp=approx_dp_budget(dataset),
            orders=_order_rows(dataset),
        )


def _entry_to_read(entry: LedgerEntry) -> LedgerEntryRead:
    return LedgerEntryRead(
        id=entry.id,
        run_id=entry.run_id,
        kind=EntryKind(entry.kind),
        epoch=entry.epoch,
        rdp=[_finite(float(v)) for v in entry.rdp],
        mechanism=entry.mechanism,
        created_at=entry.created_at,
        actor=entry.actor,
    )


def list_ledger(
    session: Session, name: str, principal: Principal, *, limit: int, offset: int
) -> LedgerEntryList:
    """Return a page of the dataset's ledger, oldest entry first."""
    principal.require_dataset_read(name)
    with read_transaction(session):
        dataset = find_dataset(session, name)
        where = LedgerEntry.dataset_id == dataset.id
        total = session.scalar(select(func.count()).select_from(LedgerEntry).where(where)) or 0
        entries = session.scalars(
            select(LedgerEntry).where(where).order_by(LedgerEntry.id).limit(limit).offset(offset)
        ).all()
        return LedgerEntryList(items=[_entry_to_read(e) for e in entries], total=total)
