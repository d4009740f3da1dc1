"""What the dashboard pages show: read-only views over datasets, their ledgers and runs.

Every number comes from the same code as the JSON API (:mod:`app.services.budgets`,
:mod:`app.ledger.budget`, :mod:`app.ledger.readouts`), so a page and
``GET /v1/datasets/{name}/budget`` always agree. The one new computation is the history of
epsilon spent, which replays the ledger through the ledger's own transitions
(:func:`app.ledger.transitions.replay_entry`, see :func:`_spend_history`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction
from app.errors import AuthenticationError
from app.ledger import budget as ledger_budget
from app.ledger import quanta, readouts
from app.ledger.budget import BudgetState
from app.ledger.quanta import Vec
from app.ledger.transitions import replay_entry
from app.models import Dataset, LedgerEntry, Run
from app.schemas import AuditRead, BudgetRead, DatasetRead, EntryKind, Role, RunRead
from app.services import budgets
from app.services.audits import audit_to_read, run_audits
from app.services.datasets import budget_state, dataset_to_read, find_dataset
from app.services.runs import find_run, read_run
from app.services.tokens import authenticate

#: Most points of the epsilon-over-time chart; longer ledgers are sampled evenly (last kept).
MAX_SPEND_POINTS = 400
#: Most ledger entries listed on a run's page.
MAX_RUN_ENTRIES = 500
#: Datasets per page of the overview.
OVERVIEW_PAGE_SIZE = 50
#: Longer login inputs cannot be tokens; they are refused without hashing.
MAX_TOKEN_LENGTH = 512


def try_authenticate(session: Session, token: str | None) -> Principal | None:
    """Return the caller behind ``token``, or None when it is missing, malformed or unknown."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        return authenticate(session, token)
    except AuthenticationError:
        return None


# --- budget bar -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetBar:
    """Shares of ``target_epsilon`` (0..1, summing to at most 1) for the budget bar."""

    spent: float
    reserved: float
    remaining: float

    @property
    def reserved_from(self) -> float:
        """Where the reserved segment starts."""
        return self.spent

    @property
    def remaining_from(self) -> float:
        """Where the remaining segment starts."""
        return self.spent + self.reserved


def _share(value: float | None, target: float) -> float:
    # None means an unbounded epsilon: the bar is full.
    if value is None or not math.isfinite(value):
        return 1.0
    return min(1.0, max(0.0, value / target))


def budget_bar(
    *, target_epsilon: float, spent: float | None, reserved: float | None, remaining: float
) -> BudgetBar:
    """Split the bar into spent, reserved but not yet spent, and remaining."""
    spent_share = _share(spent, target_epsilon)
    reserved_share = max(0.0, _share(reserved, target_epsilon) - spent_share)
    remaining_share = min(_share(remaining, target_epsilon), 1.0 - spent_share - reserved_share)
    return BudgetBar(spent_share, reserved_share, max(0.0, remaining_share))


def _bar(budget: BudgetRead) -> BudgetBar:
    return budget_bar(
        target_epsilon=budget.target_epsilon,
        spent=budget.epsilon_spent,
        reserved=budget.epsilon_reserved,
        remaining=budget.epsilon_remaining,
    )


# --- overview ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """One line of the overview: the budget (as the budget endpoint reports it) and activity."""

    name: str
    description: str
    target_epsilon: float
    target_delta: float
    epsilon_spent: float | None
    epsilon_reserved: float | None
    epsilon_remaining: float
    runs: int
    last_activity: datetime
    bar: BudgetBar


@dataclass(frozen=True)
class DatasetOverview:
    """A page of dataset summaries, by name."""

    items: list[DatasetSummary]
    total: int
    offset: int
    limit: int


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _summary(
    dataset: DatasetRead, budget: BudgetRead, last_activity: datetime | None
) -> DatasetSummary:
    # Every number is the budget endpoint's own (budgets.get_budget), so the two always agree.
    return DatasetSummary(
        name=dataset.name,
        description=dataset.description,
        target_epsilon=budget.target_epsilon,
        target_delta=budget.target_delta,
        epsilon_spent=budget.epsilon_spent,
        epsilon_reserved=budget.epsilon_reserved,
        epsilon_remaining=budget.epsilon_remaining,
        runs=sum(kind.runs for kind in budget.by_kind),  # every run, not one page
        last_activity=max(dataset.created_at, last_activity or dataset.created_at),
        bar=_bar(budget),
    )


def _last_activity(session: Session, ids: list[int]) -> dict[int, datetime]:
    """Return the latest run creation or ledger entry per dataset id."""
    latest: dict[int, datetime] = {}
    for column, dataset_id in (
        (Run.created_at, Run.dataset_id),
        (LedgerEntry.created_at, LedgerEntry.dataset_id),
    ):
        rows = session.execute(
            select(dataset_id, func.max(column)).where(dataset_id.in_(ids)).group_by(dataset_id)
        )
        for key, when in rows:
            if when is not None:
                latest[key] = max(latest.get(key, when), when)
    return latest


def list_dataset_summaries(
    session: Session, principal: Principal, *, offset: int, limit: int = OVERVIEW_PAGE_SIZE
) -> DatasetOverview:
    """Return a page of the datasets this caller may read (same rule as ``GET /v1/datasets``).

    Each line costs one ``get_budget`` (a pass over the dataset's charges), bounded by ``limit``.
    """
    query = select(Dataset)
    if principal.role is Role.trainer:
        query = query.where(Dataset.name.in_(sorted(principal.datasets)))
    with read_transaction(session):
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(Dataset.name).limit(limit).offset(offset)).all()
        latest = _last_activity(session, [row.id for row in rows])
        listed = [(dataset_to_read(row), latest.get(row.id)) for row in rows]
    items = [
        _summary(dataset, budgets.get_budget(session, dataset.name, principal), when)
        for dataset, when in listed
    ]
    return DatasetOverview(items=items, total=total, offset=offset, limit=limit)


# --- one dataset ------------------------------------------------------------------------------

#: Runs per page of the dataset page (the budget endpoint's page; "Next runs" links to the next).
RUNS_PAGE_SIZE = 100


@dataclass(frozen=True)
class SpendPoint:
    """Epsilon spent on the dataset right after one charge."""

    created_at: datetime
    run_id: int
    epoch: int | None
    epsilon_spent: float | None
    epsilon_non_adaptive: float | None


@dataclass(frozen=True)
class SpendHistory:
    """Points of the epsilon-over-time chart; ``charges`` counts all charges, shown or not."""

    points: list[SpendPoint]
    charges: int

    @property
    def sampled(self) -> bool:
        """Whether some charges were left out of the chart."""
        return len(self.points) < self.charges


@dataclass(frozen=True)
class DatasetDetail:
    """The dataset page: the dataset, its budget (as the API returns it) and its history."""

    dataset: DatasetRead
    budget: BudgetRead
    bar: BudgetBar
    history: SpendHistory


def sample_indices(count: int, most: int) -> set[int]:
    """Return at most ``most`` indices of range(count), evenly spread, first and last included."""
    if count <= most:
        return set(range(count))
    return {int(i) for i in np.linspace(0, count - 1, num=most).round()}


class _Replay:
    """The dataset's budget rebuilt entry by entry with the ledger's own transitions."""

    def __init__(self, dataset: Dataset) -> None:
        start = budget_state(dataset)
        zero = quanta.zeros(len(dataset.orders))
        self.state = BudgetState(
            start.target_epsilon, start.capacity, zero, zero, (True,) * len(dataset.orders)
        )
        self.planned_runs: set[int] = set()

    def apply(self, kind: str, rdp: Vec, run_id: int) -> None:
        """Apply one ledger entry."""
        entry_kind = EntryKind(kind)
        if entry_kind is EntryKind.reservation:
            self.planned_runs.add(run_id)
        self.state = replay_entry(
            self.state, entry_kind, rdp, reserved_before=run_id in self.planned_runs
        )

    def epsilon_spent(self) -> float | None:
        """Return the filter epsilon of the committed RDP with the alive set of this moment."""
        return _finite(ledger_budget.epsilon_spent(self.state))


def _count_charges(session: Session, dataset: Dataset) -> int:
    query = select(func.count()).select_from(LedgerEntry)
    where = (LedgerEntry.dataset_id == dataset.id, LedgerEntry.kind == EntryKind.charge.value)
    return session.scalar(query.where(*where)) or 0


def _spend_history(session: Session, dataset: Dataset) -> SpendHistory:
    """Replay the dataset's ledger (:class:`_FilterReplay`) and read epsilon after each charge.

    Each point is the filter epsilon of the committed RDP with the alive set of that moment; after
    the latest charge it is the budget endpoint's ``epsilon_spent`` (unless a later reservation
    shrank L; black-box approximate-DP releases, spent outside the filter, are not included).
    The replay applies the same exact transitions as the services, so it ends in the stored state.
    ``epsilon_non_adaptive`` is the plain RDP conversion of the same sum. Cost: one pass over the
    ledger, conversions only at the (at most MAX_SPEND_POINTS) sampled charges.
    """
    charges = _count_charges(session, dataset)
    keep = sample_indices(charges, MAX_SPEND_POINTS)
    replay, points, index = _Replay(dataset), [], 0
    columns = (LedgerEntry.kind, LedgerEntry.rdp, LedgerEntry.run_id, LedgerEntry.epoch)
    rows = session.execute(
        select(*columns, LedgerEntry.created_at)
        .where(LedgerEntry.dataset_id == dataset.id)
        .order_by(LedgerEntry.id)
        .execution_options(yield_per=1000)
    )
    for kind, rdp, run_id, epoch, created_at in rows:
        replay.apply(kind, rdp, run_id)
        if kind != EntryKind.charge.value:
            continue
        if index in keep:
            non_adaptive = readouts.epsilon_of_vector(
                orders=dataset.orders, vector=replay.state.committed, delta=dataset.target_delta
            ).epsilon
            points.append(
                SpendPoint(created_at, run_id, epoch, replay.epsilon_spent(), non_adaptive)
            )
        index += 1
    return SpendHistory(points=points, charges=charges)


def get_dataset_detail(
    session: Session, name: str, principal: Principal, *, runs_after: int = 0
) -> DatasetDetail:
    """Return what the dataset page shows (403/404 as ``GET /v1/datasets/{name}/budget``), with
    one page of its runs (ids above ``runs_after``)."""
    budget = budgets.get_budget(
        session, name, principal, runs_limit=RUNS_PAGE_SIZE, runs_after=runs_after
    )
    with read_transaction(session):
        dataset = find_dataset(session, name)
        detail = dataset_to_read(dataset)
        history = _spend_history(session, dataset)
    return DatasetDetail(dataset=detail, budget=budget, bar=_bar(budget), history=history)


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEntry:
    """One ledger entry of a run; charges carry the run's epsilon after them."""

    id: int
    kind: EntryKind
    epoch: int | None
    created_at: datetime
    actor: str
    epsilon_after: float | None


@dataclass(frozen=True)
class RunDetail:
    """The run page: its reservation (planned RDP curve) against its charges, and its entries.

    A run that reserved nothing (refused, or charged as it goes) has ``reserved`` False, an empty
    ``planned_rdp`` and no ``epsilon_planned``.
    """

    run: RunRead
    dataset: DatasetRead
    planned_rdp: list[float | None]
    charged_rdp: list[float | None]
    released_rdp: list[float | None]
    reserved: bool
    epsilon_planned: float | None
    epsilon_charged: float | None
    entries: list[RunEntry]
    entries_total: int
    audits: list[AuditRead] = field(default_factory=list)


def _vector(values: Vec | None) -> list[float | None]:
    if values is None:
        return []
    return [_finite(float(v)) for v in quanta.to_floats_up(values)]


def _epsilon(orders: list[float], values: Vec, delta: float) -> float | None:
    return readouts.epsilon_of_vector(orders=orders, vector=values, delta=delta).epsilon


def _run_entries(
    rows: Sequence[LedgerEntry], dataset: Dataset
) -> tuple[list[RunEntry], Vec | None, Vec, Vec | None]:
    """Return the listed entries and the run's reservation, summed charges and release."""
    planned: Vec | None = None
    released: Vec | None = None
    charged: Vec = quanta.zeros(len(dataset.orders))
    entries: list[RunEntry] = []
    for row in rows:
        kind = EntryKind(row.kind)
        after: float | None = None
        if kind is EntryKind.reservation:
            planned = row.rdp
        elif kind is EntryKind.release:
            released = row.rdp
        else:
            # Exact sums, so the last one equals RunRead.epsilon_run.
            charged = quanta.add(charged, row.rdp)
            if len(entries) < MAX_RUN_ENTRIES:
                after = _epsilon(list(dataset.orders), charged, dataset.target_delta)
        if len(entries) < MAX_RUN_ENTRIES:
            entries.append(RunEntry(row.id, kind, row.epoch, row.created_at, row.actor, after))
    return entries, planned, charged, released


def get_run_detail(session: Session, run_id: int, principal: Principal) -> RunDetail:
    """Return what the run page shows (403/404 as ``GET /v1/runs/{run_id}``)."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_read(dataset.name)
        rows = session.scalars(
            select(LedgerEntry).where(LedgerEntry.run_id == run.id).order_by(LedgerEntry.id)
        ).all()
        entries, planned, charged, released = _run_entries(rows, dataset)
        orders, delta = list(dataset.orders), dataset.target_delta
        return RunDetail(
            run=read_run(session, run, dataset),
            dataset=dataset_to_read(dataset),
            planned_rdp=_vector(planned),
            charged_rdp=_vector(charged),
            released_rdp=_vector(released),
            reserved=planned is not None,
            epsilon_planned=None if planned is None else _epsilon(orders, planned, delta),
            epsilon_charged=_epsilon(orders, charged, delta),
            entries=entries,
            entries_total=len(rows),
            audits=[audit_to_read(a) for a in run_audits(session, run.id)],
        )


# --- chart payloads (JSON for static/dashboard.js; no computation happens in the browser) ------


def _series(label: str, values: Iterable[float | None], role: str) -> dict[str, Any]:
    return {"label": label, "data": list(values), "role": role}


def spend_chart(history: SpendHistory, target_epsilon: float) -> dict[str, Any]:
    """Return the epsilon-over-time chart: filter epsilon, non-adaptive epsilon, the target."""
    points = history.points
    return {
        "type": "line",
        "labels": [p.created_at.strftime("%Y-%m-%d %H:%M:%S") for p in points],
        "x_title": "charge time (UTC)",
        "y_title": "epsilon",
        "datasets": [
            _series("epsilon spent (filter)", (p.epsilon_spent for p in points), "primary"),
            _series("epsilon non-adaptive", (p.epsilon_non_adaptive for p in points), "secondary"),
            _series("target epsilon", (target_epsilon for _ in points), "limit"),
        ],
    }


def _positive(values: list[float | None]) -> list[float | None]:
    # A log axis cannot show 0 (nothing charged yet at that order): leave a gap instead.
    return [v if v is not None and v > 0 else None for v in values]


def run_chart(detail: RunDetail) -> dict[str, Any]:
    """Return the run's RDP curve per order (log scale): reserved against charged."""
    datasets = [_series("charged", _positive(detail.charged_rdp), "primary")]
    if detail.reserved:
        datasets.insert(
            0, _series("planned (reserved)", _positive(detail.planned_rdp), "secondary")
        )
    return {
        "type": "line",
        "labels": [f"{order:g}" for order in detail.dataset.orders],
        "x_title": "Renyi order",
        "y_title": "RDP (log scale)",
        "y_scale": "logarithmic",
        "datasets": datasets,
    }
