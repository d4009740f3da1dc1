"""Black-box (epsilon, delta) releases, charged to the dataset's approximate-DP sub-budget.

Some mechanisms come with an (epsilon, delta)-DP guarantee and no RDP curve. They cannot pass the
RDP filter, so a dataset may set aside (eps_B, delta_B) of its budget at creation; the filter
guards the rest, (eps_G - eps_B, delta_G - delta_B). Releases are admitted while the sums of their
epsilons and deltas stay within (eps_B, delta_B): basic composition, which stays valid when the
releases are chosen adaptively (the privacy filter of Rogers, Roth, Ullman & Vadhan 2016,
Thm. 3.6). The two parts run side by side and compose to (eps_G, delta_G).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import BudgetExceededError
from app.ledger import quanta
from app.ledger.costs import UnitCosts
from app.models import Dataset, LedgerEntry, Run
from app.observability import log_approx_decision
from app.schemas import (
    AdmissionPreview,
    ApproxDpRelease,
    EntryKind,
    MechanismKind,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import stored_mechanism
from app.services.datasets import find_dataset, lock_dataset
from app.services.runs import forget_old_refusals, new_run, run_to_read

#: How an approximate-DP release is described in the ledger (it has no dp_core mechanism).
APPROX_DP_MECHANISM_VERSION = 1


def _up(value: Fraction) -> float:
    """Return the smallest float not below an exact sum: the reported totals never understate
    what was released, and never pass a sub-budget the exact sum stays within."""
    nearest = float(value)
    return nearest if Fraction(nearest) >= value else math.nextafter(nearest, math.inf)


def _spent_exactly(session: Session, dataset: Dataset) -> tuple[Fraction, Fraction]:
    """Return the exact sums of the admitted releases' epsilons and deltas.

    Summing in exact arithmetic lets releases fill the sub-budget to the last bit (0.6 + 0.4 fits
    in 1.0) while never admitting a true sum above it; the float totals on the dataset row are
    rounded up and only reported.
    """
    specs: Iterable[dict[str, Any] | None] = session.scalars(
        select(Run.spec).where(
            Run.dataset_id == dataset.id,
            Run.kind == MechanismKind.approx_dp_release.value,
            Run.status == RunStatus.finished.value,
        )
    )
    epsilon, delta = Fraction(0), Fraction(0)
    for spec in specs:
        assert spec is not None
        epsilon += Fraction(spec["epsilon"])
        delta += Fraction(spec["delta"])
    return epsilon, delta


def _after(
    session: Session, dataset: Dataset, release: ApproxDpRelease
) -> tuple[Fraction, Fraction] | None:
    """Return the exact spent sums with ``release`` added, or None when they would not fit."""
    epsilon, delta = _spent_exactly(session, dataset)
    epsilon, delta = epsilon + Fraction(release.epsilon), delta + Fraction(release.delta)
    if epsilon <= Fraction(dataset.approx_epsilon) and delta <= Fraction(dataset.approx_delta):
        return epsilon, delta
    return None


def _refusal(dataset: Dataset, release: ApproxDpRelease, run_id: int | None) -> BudgetExceededError:
    remaining = max(0.0, dataset.approx_epsilon - dataset.approx_epsilon_spent)
    remaining_delta = max(0.0, dataset.approx_delta - dataset.approx_delta_spent)
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
        if _after(session, dataset, release) is None:
            raise _refusal(dataset, release, None)
        return AdmissionPreview(
            dataset=dataset.name,
            epsilon_projected=dataset.approx_epsilon_spent + release.epsilon,
            epsilon_remaining=max(0.0, dataset.approx_epsilon - dataset.approx_epsilon_spent),
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
        sums = _after(session, dataset, release)
        admitted = sums is not None
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
        if sums is not None:
            dataset.approx_epsilon_spent, dataset.approx_delta_spent = _up(sums[0]), _up(sums[1])
            run.status = RunStatus.finished.value
            session.add(
                LedgerEntry(
                    dataset_id=dataset.id,
                    run_id=run.id,
                    kind=EntryKind.charge.value,
                    epoch=0,
                    rdp=zero,
                    mechanism={
                        "version": APPROX_DP_MECHANISM_VERSION,
                        "mechanism": {"type": "ApproxDp", **stored},
                    },
                    actor=principal.actor,
                )
            )
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
