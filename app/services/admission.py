"""Admitting runs: reserve a run's whole planned RDP curve, or refuse it, atomically."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import BudgetExceededError, NotFoundError
from app.models import Dataset, FloatArray, LedgerEntry, Run
from app.observability import AdmissionLog, observe_admission
from app.schemas import (
    AdmissionPreview,
    ApproxDpRelease,
    EntryKind,
    Reservation,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import (
    ChargeSpec,
    ReleaseSpec,
    add_up,
    charge_spec,
    epoch_rdp,
    epochs_rdp,
    mechanism_json,
    stored_mechanism,
)
from app.services.admission_filter import FilterDecision, decide
from app.services.approx_release import admit_approx_release
from app.services.datasets import filter_state, find_dataset, lock_dataset
from app.services.runs import new_run
from app.services.runs import run_spec as run_spec
from app.services.runs import run_to_read as run_to_read


def budget_refusal(
    dataset: Dataset, decision: FilterDecision, run_id: int | None
) -> BudgetExceededError:
    """Return the 409 for a request the filter refused."""
    return BudgetExceededError(
        f"run does not fit the budget of {dataset.name!r}: epsilon would reach"
        f" {decision.epsilon_projected:.6g} > target {dataset.target_epsilon:g}"
        f" ({decision.epsilon_remaining:.6g} remaining)",
        epsilon_projected=decision.epsilon_projected,
        epsilon_remaining=decision.epsilon_remaining,
        run_id=run_id,
    )


def _record_admission(
    session: Session,
    dataset: Dataset,
    run: Run,
    spec: ChargeSpec,
    planned: FloatArray,
    decision: FilterDecision,
) -> None:
    """Write what an admission means: a release is charged at once, a plan run reserves.

    A pay-as-you-go run holds nothing until its first epoch is charged, so S stays as it is.
    """
    actor = run.created_by
    if isinstance(spec, ReleaseSpec):
        entry_kind, epoch = EntryKind.charge, 0
        dataset.rdp_committed = add_up(dataset.rdp_committed, planned)
        run.status, run.epochs_charged = RunStatus.finished.value, 1
    elif run.reservation == Reservation.plan.value:
        entry_kind, epoch = EntryKind.reservation, None
        run.status = RunStatus.admitted.value
    else:  # pay as you go: nothing is held until the first epoch is charged
        run.status = RunStatus.admitted.value
        return
    dataset.rdp_reserved = decision.state.reserved
    dataset.alive = [bool(flag) for flag in decision.state.alive]
    session.add(
        LedgerEntry(
            dataset_id=dataset.id,
            run_id=run.id,
            kind=entry_kind.value,
            epoch=epoch,
            rdp=planned,
            mechanism=mechanism_json(spec.epochs_mechanism(0, spec.epochs)),
            actor=actor,
        )
    )


@observe_admission
def admit_run(
    session: Session, body: RunCreate, principal: Principal, *, dry_run: bool
) -> RunRead | AdmissionPreview:
    """Admit ``body`` by reserving its planned RDP, or raise BudgetExceededError.

    The RDP is computed before the lock (it depends only on the request and the dataset's fixed
    grid); the check and the writes then happen in one transaction holding the dataset lock. A
    real refusal records the run as ``refused`` (no ledger entry, filter state unchanged); a dry
    run writes nothing. A run with ``reservation=epoch`` reserves nothing: it is admitted when its
    first epoch would pass the filter now, and each epoch passes the filter when charged. A
    Laplace or Gaussian release is admitted and charged at once; an approximate-DP release goes
    to its sub-budget (:mod:`app.services.approx_release`).
    """
    principal.require_dataset_write(body.dataset)
    mechanism = body.resolved_mechanism()
    if isinstance(mechanism, ApproxDpRelease):
        return admit_approx_release(session, body, mechanism, principal, dry_run=dry_run)
    spec = charge_spec(mechanism)
    stored = stored_mechanism(mechanism, spec)
    log = AdmissionLog.for_request(body, stored, principal.actor, dry_run=dry_run)
    with read_transaction(session):
        dataset = find_dataset(session, body.dataset)
        dataset_id, orders = dataset.id, list(dataset.orders)
    per_epoch = body.reservation is Reservation.epoch and not isinstance(spec, ReleaseSpec)
    planned = epoch_rdp(spec, 0, orders) if per_epoch else epochs_rdp(spec, 0, spec.epochs, orders)
    if dry_run:
        return _preview(session, dataset_id, planned, log)
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        decision = decide(filter_state(dataset), planned)
        run = new_run(body, stored, spec.epochs, dataset, principal.actor)
        session.add(run)
        session.flush()
        if decision.admitted:
            _record_admission(session, dataset, run, spec, planned, decision)
        session.flush()
        result = run_to_read(run, dataset.name)
    log.log_decision(dataset=dataset.name, orders=orders, decision=decision, run_id=result.id)
    if not decision.admitted:
        raise budget_refusal(dataset, decision, result.id)
    return result


def _preview(
    session: Session, dataset_id: int, planned: np.ndarray, log: AdmissionLog
) -> AdmissionPreview:
    with read_transaction(session):
        dataset = session.get_one(Dataset, dataset_id)
        decision = decide(filter_state(dataset), planned)
        log.log_decision(
            dataset=dataset.name, orders=dataset.orders, decision=decision, run_id=None
        )
        if not decision.admitted or decision.order_index is None:
            raise budget_refusal(dataset, decision, None)
        return AdmissionPreview(
            dataset=dataset.name,
            epsilon_projected=decision.epsilon_projected,
            epsilon_remaining=decision.epsilon_remaining,
            order=float(dataset.orders[decision.order_index]),
        )


def find_run(session: Session, run_id: int) -> tuple[Run, Dataset]:
    """Return the run and its dataset or raise NotFoundError."""
    row = session.execute(
        select(Run, Dataset).join(Dataset, Run.dataset_id == Dataset.id).where(Run.id == run_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no run {run_id}")
    return row[0], row[1]


def get_run(session: Session, run_id: int, principal: Principal) -> RunRead:
    """Return one run."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_read(dataset.name)
        return run_to_read(run, dataset.name)
