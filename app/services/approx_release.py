"""Black-box (epsilon, delta) releases, charged to the dataset's approximate-DP part.

The rule (basic composition against the part set aside at creation) is
:mod:`app.ledger.approx`; this module loads the exact sums, asks the rule, and writes the run
and its one charge through :mod:`app.services.ledger_writes`, in one transaction holding the
dataset lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import BudgetExceededError
from app.ledger import approx, quanta
from app.ledger.approx import ApproxDecision
from app.ledger.costs import UnitCosts
from app.ledger.transitions import Entry, EntryKind
from app.models import Dataset, Run
from app.observability import log_approx_decision
from app.schemas import (
    AdmissionPreview,
    ApproxDpRelease,
    MechanismKind,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import stored_mechanism
from app.services.datasets import find_dataset, lock_dataset
from app.services.ledger_writes import ledger_row
from app.services.runs import forget_old_refusals, new_run, run_to_read

#: How an approximate-DP release is described in the ledger (it has no dp_core mechanism).
APPROX_DP_MECHANISM_VERSION = 1


def _spent_exactly(session: Session, dataset: Dataset) -> tuple[Fraction, Fraction]:
    """Return the exact sums of the admitted releases' epsilons and deltas."""
    specs: Iterable[dict[str, Any] | None] = session.scalars(
        select(Run.spec).where(
            Run.dataset_id == dataset.id,
            Run.kind == MechanismKind.approx_dp_release.value,
            Run.status == RunStatus.finished.value,
        )
    )
    return approx.exact_sums((spec["epsilon"], spec["delta"]) for spec in specs if spec)


def _decide(session: Session, dataset: Dataset, release: ApproxDpRelease) -> ApproxDecision:
    return approx.admit_release(
        budget=(dataset.approx_epsilon, dataset.approx_delta),
        spent=_spent_exactly(session, dataset),
        release=(release.epsilon, release.delta),
    )


def _refusal(dataset: Dataset, release: ApproxDpRelease, run_id: int | None) -> BudgetExceededError:
    remaining = approx.part_remaining(
        budget=dataset.approx_epsilon, spent=dataset.approx_epsilon_spent
    )
    remaining_delta = approx.part_remaining(
        budget=dataset.approx_delta, spent=dataset.approx_delta_spent
    )
    return BudgetExceededError(
        f"release ({release.epsilon:g}, {release.delta:g}) does not fit the approximate-DP"
        f" sub-budget of {dataset.name!r}: ({remaining:.6g}, {remaining_delta:.3g}) remaining",
        budget="approx_dp",
        epsilon_projected=dataset.approx_epsilon_spent + release.epsilon,
        epsilon_remaining=remaining,
        delta_remaining=remaining_delta,
        run_id=run_id,
    )


def _preview(session: Session, name: str, release: ApproxDpRelease) -> AdmissionPreview:
    with read_transaction(session):
        dataset = find_dataset(session, name)
        if not _decide(session, dataset, release).admitted:
            raise _refusal(dataset, release, None)
        return AdmissionPreview(
            dataset=dataset.name,
            epsilon_projected=dataset.approx_epsilon_spent + release.epsilon,
            epsilon_remaining=approx.part_remaining(
                budget=dataset.approx_epsilon, spent=dataset.approx_epsilon_spent
            ),
            order=None,
        )


def admit_approx_release(
    session: Session,
    body: RunCreate,
    release: ApproxDpRelease,
    principal: Principal,
    *,
    dry_run: bool,
    idempotency_key: str | None = None,
) -> RunRead | AdmissionPreview:
    """Admit and charge a black-box release at once, or refuse it (409, nothing charged)."""
    if dry_run:
        return _preview(session, body.dataset, release)
    stored = stored_mechanism(release, None)
    with read_transaction(session):
        dataset_id = find_dataset(session, body.dataset).id
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        decision = _decide(session, dataset, release)
        admitted = decision.admitted
        zero = quanta.zeros(len(dataset.orders))
        run = new_run(
            body,
            stored,
            units=1,
            costs=UnitCosts.uniform(zero, 1),
            dataset=dataset,
            actor=principal.actor,
            idempotency_key=idempotency_key,
        )
        session.add(run)
        session.flush()
        if admitted:
            dataset.approx_epsilon_spent = decision.epsilon_spent
            dataset.approx_delta_spent = decision.delta_spent
            run.status = RunStatus.finished.value
            entry = Entry(EntryKind.charge, 0, 1, zero)
            mechanism = {"version": APPROX_DP_MECHANISM_VERSION,
                         "mechanism": {"type": "ApproxDp", **stored}}  # fmt: skip
            session.add(ledger_row(dataset, run, entry, mechanism, principal.actor))
        session.flush()
        if not admitted:
            forget_old_refusals(session, dataset.id)
        result = run_to_read(run, dataset, 1 if admitted else 0)
    log_approx_decision(
        dataset=dataset.name,
        run_name=body.name,
        release=stored,
        admitted=admitted,
        actor=principal.actor,
        sub_budget={
            "approx_epsilon_spent": dataset.approx_epsilon_spent,
            "approx_epsilon": dataset.approx_epsilon,
            "approx_delta_spent": dataset.approx_delta_spent,
            "approx_delta": dataset.approx_delta,
        },
    )
    if not admitted:
        raise _refusal(dataset, release, result.id)
    return result
