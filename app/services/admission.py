"""Admitting runs: reserve a run's whole planned RDP curve, or refuse it, atomically."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import BudgetExceededError, NotFoundError
from app.models import Dataset, LedgerEntry, Run
from app.schemas import (
    AdmissionPreview,
    EntryKind,
    NoiseSpec,
    Reservation,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import (
    RunSpec,
    epoch_rdp,
    epochs_rdp,
    make_run_spec,
    mechanism_json,
)
from app.services.admission_filter import FilterDecision, decide
from app.services.datasets import filter_state, find_dataset, lock_dataset


def run_spec(run: Run) -> RunSpec:
    """Return the accounting view of a stored run."""
    return make_run_spec(
        sample_rate=run.sample_rate,
        steps_per_epoch=run.steps_per_epoch,
        epochs=run.epochs,
        schedule=run.noise_schedule,
        noise_multiplier=run.noise_multiplier,
        decay_rate=run.decay_rate,
    )


def run_to_read(run: Run, dataset_name: str) -> RunRead:
    """Return the API view of a run."""
    return RunRead(
        id=run.id,
        dataset=dataset_name,
        name=run.name,
        sample_rate=run.sample_rate,
        steps_per_epoch=run.steps_per_epoch,
        epochs=run.epochs,
        noise=NoiseSpec(
            schedule=run.noise_schedule,
            noise_multiplier=run.noise_multiplier,
            decay_rate=run.decay_rate,
        ),
        max_grad_norm=run.max_grad_norm,
        reservation=Reservation(run.reservation),
        status=RunStatus(run.status),
        epochs_charged=run.epochs_charged,
        created_at=run.created_at,
    )


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


def _new_run(
    body: RunCreate, spec: RunSpec, dataset: Dataset, status: RunStatus, actor: str
) -> Run:
    return Run(
        dataset_id=dataset.id,
        name=body.name,
        sample_rate=spec.sample_rate,
        steps_per_epoch=spec.steps_per_epoch,
        epochs=spec.epochs,
        noise_schedule=spec.schedule.kind,
        noise_multiplier=spec.schedule.noise_multiplier,
        decay_rate=spec.schedule.decay_rate,
        max_grad_norm=body.max_grad_norm,
        reservation=body.reservation.value,
        status=status.value,
        epochs_charged=0,
        created_by=actor,
    )


def admit_run(
    session: Session, body: RunCreate, principal: Principal, *, dry_run: bool
) -> RunRead | AdmissionPreview:
    """Admit ``body`` by reserving its planned RDP, or raise BudgetExceededError.

    The RDP is computed before the lock (it depends only on the request and the dataset's fixed
    grid); the check and the writes then happen in one transaction holding the dataset lock. A
    real refusal records the run as ``refused`` (no ledger entry, filter state unchanged); a dry
    run writes nothing. A run with ``reservation=epoch`` reserves nothing: it is admitted when its
    first epoch would pass the filter now, and each epoch passes the filter when charged.
    """
    principal.require_dataset_write(body.dataset)
    spec = make_run_spec(
        sample_rate=body.sample_rate,
        steps_per_epoch=body.steps_per_epoch,
        epochs=body.epochs,
        schedule=body.noise.schedule,
        noise_multiplier=body.noise.noise_multiplier,
        decay_rate=body.noise.decay_rate,
    )
    with read_transaction(session):
        dataset = find_dataset(session, body.dataset)
        dataset_id, orders = dataset.id, list(dataset.orders)
    per_epoch = body.reservation is Reservation.epoch
    planned = epoch_rdp(spec, 0, orders) if per_epoch else epochs_rdp(spec, 0, spec.epochs, orders)
    if dry_run:
        return _preview(session, dataset_id, planned)
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        decision = decide(filter_state(dataset), planned)
        status = RunStatus.admitted if decision.admitted else RunStatus.refused
        run = _new_run(body, spec, dataset, status, principal.actor)
        session.add(run)
        if decision.admitted and not per_epoch:
            session.flush()
            session.add(
                LedgerEntry(
                    dataset_id=dataset.id,
                    run_id=run.id,
                    kind=EntryKind.reservation.value,
                    epoch=None,
                    rdp=planned,
                    mechanism=mechanism_json(spec.epochs_mechanism(0, spec.epochs)),
                    actor=principal.actor,
                )
            )
            dataset.rdp_reserved = decision.state.reserved
            dataset.alive = [bool(flag) for flag in decision.state.alive]
        session.flush()
        result = run_to_read(run, dataset.name)
    if not decision.admitted:
        raise budget_refusal(dataset, decision, result.id)
    return result


def _preview(session: Session, dataset_id: int, planned: np.ndarray) -> AdmissionPreview:
    with read_transaction(session):
        dataset = session.get_one(Dataset, dataset_id)
        decision = decide(filter_state(dataset), planned)
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
