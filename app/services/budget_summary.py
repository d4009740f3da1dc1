"""Every dataset's budget in a few numbers, read from the database (for /metrics and the CLI).

The numbers are the filter's, as in :func:`app.services.budgets.get_budget`: computed from the
stored state on each read, so every replica of the service reports the same values.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import read_transaction
from app.models import Dataset, Run
from app.services.budgets import headline


@dataclass(frozen=True)
class BudgetSummary:
    """One dataset's budget: targets, filter epsilons (inf when no order is left), runs by status."""

    dataset: str
    target_epsilon: float
    target_delta: float
    epsilon_spent: float
    epsilon_reserved: float
    epsilon_remaining: float
    runs: dict[str, int] = field(default_factory=dict)


def _runs_by_status(session: Session) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    rows = session.execute(
        select(Run.dataset_id, Run.status, func.count()).group_by(Run.dataset_id, Run.status)
    )
    for dataset_id, status, count in rows:
        counts[dataset_id][status] = int(count)
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
