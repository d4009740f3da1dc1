"""Reading budgets: one dataset's (the budget endpoint), every dataset's (metrics, CLI), ledgers.

Every number is read through :mod:`app.ledger.budget` on the stored state (the headline numbers
through :func:`app.services.datasets.headline`), so every replica and every view reports the same.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from app.auth import Principal
from app.db import read_transaction
from app.ledger import budget, quanta, readouts
from app.ledger.transitions import EntryKind
from app.models import Dataset, LedgerEntry, Run
from app.schemas import (
    BudgetRead,
    KindSpend,
    LedgerEntryList,
    LedgerEntryRead,
    MechanismKind,
    OrderHeadroom,
    RunBudget,
    RunStatus,
)
from app.services.datasets import (
    approx_dp_budget,
    budget_state,
    find_dataset,
    finite,
    headline,
    privacy_unit_of,
)
from app.services.runs import api_status, charged_units, run_costs, run_epsilon


def _order_rows(dataset: Dataset) -> list[OrderHeadroom]:
    state = budget_state(dataset)
    shares = budget.headroom_used(state)
    capacity = quanta.to_floats_down(dataset.capacity)
    reserved = quanta.to_floats_up(dataset.rdp_reserved)
    committed = quanta.to_floats_up(dataset.rdp_committed)
    return [
        OrderHeadroom(
            order=float(order),
            weight=float(weight),
            capacity=float(capacity[i]),
            rdp_committed=finite(float(committed[i])),
            rdp_reserved=finite(float(reserved[i])),
            headroom=finite(float(capacity[i] - reserved[i])),
            share_used=None if shares[i] is None else finite(float(shares[i])),  # type: ignore[arg-type]
            alive=bool(dataset.alive[i]),
        )
        for i, (order, weight) in enumerate(zip(dataset.orders, dataset.weights, strict=True))
    ]


def _spend_by_kind(dataset: Dataset, runs: list[Run], charged: dict[int, int]) -> list[KindSpend]:
    """Per mechanism kind: its runs and the epsilon of its charges alone."""
    rows = []
    orders = list(dataset.orders)
    for kind in MechanismKind:
        of_kind = [run for run in runs if run.kind == kind.value]
        if not of_kind:
            continue
        if kind is MechanismKind.approx_dp_release:
            epsilon: float | None = dataset.approx_epsilon_spent
        else:
            total = quanta.zeros(len(orders))
            for run in of_kind:
                if charged.get(run.id):
                    total = quanta.add(total, run_costs(run, orders).total(0, charged[run.id]))
            epsilon = readouts.epsilon_of_vector(
                orders=orders, vector=total, delta=dataset.target_delta
            ).epsilon
        rows.append(KindSpend(kind=kind, runs=len(of_kind), epsilon_run=epsilon))
    return rows


def get_budget(
    session: Session, name: str, principal: Principal, *, runs_limit: int = 100, runs_after: int = 0
) -> BudgetRead:
    """Return where the dataset's budget stands, with one page of its runs (ids > runs_after)."""
    principal.require_dataset_read(name)
    with read_transaction(session):
        dataset = find_dataset(session, name)
        numbers = headline(dataset)
        runs = list(
            session.scalars(select(Run).where(Run.dataset_id == dataset.id).order_by(Run.id))
        )
        charged = charged_units(session, [run.id for run in runs])
        page = [run for run in runs if run.id > runs_after][:runs_limit]
        more = len([run for run in runs if run.id > runs_after]) > runs_limit
        run_rows = [
            RunBudget(
                id=run.id,
                name=run.name,
                kind=MechanismKind(run.kind),
                status=api_status(run, charged.get(run.id, 0)),
                epochs=run.epochs,
                epochs_charged=charged.get(run.id, 0),
                epsilon_run=run_epsilon(run, dataset, charged.get(run.id, 0)),
                reproducible_noise=bool(run.reproducible_noise),
            )
            for run in page
        ]
        return BudgetRead(
            dataset=dataset.name,
            target_epsilon=dataset.target_epsilon,
            target_delta=dataset.target_delta,
            epsilon_spent=finite(numbers.spent),
            epsilon_reserved=finite(numbers.reserved),
            epsilon_remaining=numbers.remaining,
            epsilon_non_adaptive=readouts.epsilon_of_vector(
                orders=dataset.orders, vector=dataset.rdp_committed, delta=dataset.target_delta
            ).epsilon,
            runs=run_rows,
            runs_next_after=page[-1].id if more and page else None,
            runs_refused_total=int(dataset.refused_runs_forgotten or 0)
            + sum(run.status == RunStatus.refused.value for run in runs),
            by_kind=_spend_by_kind(dataset, runs, charged),
            approx_dp=approx_dp_budget(dataset),
            orders=_order_rows(dataset),
            privacy_unit=privacy_unit_of(dataset),
        )


# --- every dataset, for /metrics and `dpledger dataset list` ------------------------------------


@dataclass(frozen=True)
class BudgetSummary:
    """One dataset's budget: targets, headline epsilons (inf when unbounded), runs by status."""

    dataset: str
    target_epsilon: float
    target_delta: float
    epsilon_spent: float
    epsilon_reserved: float
    epsilon_remaining: float
    runs: dict[str, int] = field(default_factory=dict)


def _runs_by_status(session: Session) -> dict[int, dict[str, int]]:
    """Count runs per dataset and API status (an admitted run with a charge is running)."""
    charges = aliased(LedgerEntry)
    has_charge = exists().where(charges.run_id == Run.id, charges.kind == EntryKind.charge.value)
    rows = session.execute(
        select(Run.dataset_id, Run.status, has_charge.label("charged"), func.count()).group_by(
            Run.dataset_id, Run.status, "charged"
        )
    )
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for dataset_id, status, charged, count in rows:
        running = status == RunStatus.admitted.value and bool(charged)
        counts[dataset_id][RunStatus.running.value if running else status] += int(count)
    return counts


def summarize_budgets(session: Session) -> list[BudgetSummary]:
    """Return the budget of every dataset, by name."""
    with read_transaction(session):
        runs = _runs_by_status(session)
        summaries = []
        for dataset in session.scalars(select(Dataset).order_by(Dataset.name)):
            numbers = headline(dataset)
            summaries.append(
                BudgetSummary(
                    dataset=dataset.name,
                    target_epsilon=dataset.target_epsilon,
                    target_delta=dataset.target_delta,
                    epsilon_spent=numbers.spent,
                    epsilon_reserved=numbers.reserved,
                    epsilon_remaining=numbers.remaining,
                    runs=dict(runs.get(dataset.id, {})),
                )
            )
        return summaries


# --- the ledger ---------------------------------------------------------------------------------


def _entry_to_read(entry: LedgerEntry) -> LedgerEntryRead:
    return LedgerEntryRead(
        id=entry.id,
        run_id=entry.run_id,
        kind=EntryKind(entry.kind),
        epoch=entry.epoch,
        rdp=[finite(float(v)) for v in quanta.to_floats_up(entry.rdp)],
        mechanism=entry.mechanism,
        created_at=entry.created_at,
        actor=entry.actor,
    )


def list_ledger(
    session: Session,
    name: str,
    principal: Principal,
    *,
    limit: int,
    offset: int,
    after: int = 0,
) -> LedgerEntryList:
    """Return a page of the dataset's ledger, oldest entry first: entries with an id above
    ``after`` (a cursor: an index walk, however deep the page), then ``offset`` skipped."""
    principal.require_dataset_read(name)
    with read_transaction(session):
        dataset = find_dataset(session, name)
        where = LedgerEntry.dataset_id == dataset.id
        total = session.scalar(select(func.count()).select_from(LedgerEntry).where(where)) or 0
        entries = session.scalars(
            select(LedgerEntry)
            .where(where, LedgerEntry.id > after)
            .order_by(LedgerEntry.id)
            .limit(limit + 1)
            .offset(offset)
        ).all()
        page, more = entries[:limit], len(entries) > limit
        return LedgerEntryList(
            items=[_entry_to_read(e) for e in page],
            total=total,
            next_after=page[-1].id if more else None,
        )
