"""Charging epochs and finishing runs: moving a run's reservation into the committed ledger."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import EpochBeyondPlanError, EpochOutOfOrderError, RunNotActiveError
from app.models import Dataset, FloatArray, LedgerEntry, Run
from app.observability import log_charge, log_epoch_decision
from app.schemas import EntryKind, EpochChargeRead, Reservation, RunRead, RunStatus
from app.services.accounting import add_up, epoch_rdp, epochs_rdp, mechanism_json, subtract_up
from app.services.admission import budget_refusal, find_run, run_spec, run_to_read
from app.services.admission_filter import decide
from app.services.datasets import filter_state, lock_dataset

_ACTIVE = (RunStatus.admitted.value, RunStatus.running.value)


def _charge_to_read(entry: LedgerEntry) -> EpochChargeRead:
    assert entry.epoch is not None
    return EpochChargeRead(
        run_id=entry.run_id,
        epoch=entry.epoch,
        ledger_entry_id=entry.id,
        created_at=entry.created_at,
    )


def _existing_charge(session: Session, run_id: int, epoch: int) -> LedgerEntry | None:
    return session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.run_id == run_id,
            LedgerEntry.kind == EntryKind.charge.value,
            LedgerEntry.epoch == epoch,
        )
    )


def _check_chargeable(run: Run, epoch: int) -> None:
    if run.status not in _ACTIVE:
        raise RunNotActiveError(f"run {run.id} is {run.status}; it cannot be charged")
    if epoch >= run.epochs:
        raise EpochBeyondPlanError(
            f"epoch {epoch} is beyond the plan of run {run.id} ({run.epochs} epochs: 0..{run.epochs - 1})"
        )
    if epoch != run.epochs_charged:
        raise EpochOutOfOrderError(
            f"run {run.id} must charge epoch {run.epochs_charged} next, not {epoch}"
        )


def _admit_epoch(dataset: Dataset, run: Run, rdp: FloatArray) -> None:
    """Pass one epoch of a pay-as-you-go run through the filter (raise 409 when it does not fit).

    The epoch is a new adaptively chosen request, so the filter's guarantee covers it exactly as
    it covers a whole run; a refusal writes nothing.
    """
    decision = decide(filter_state(dataset), rdp)
    log_epoch_decision(dataset=dataset, run=run, decision=decision)
    if not decision.admitted:
        raise budget_refusal(dataset, decision, run.id)
    dataset.rdp_reserved = decision.state.reserved
    dataset.alive = [bool(flag) for flag in decision.state.alive]


def charge_epoch(
    session: Session, run_id: int, epoch: int, principal: Principal
) -> EpochChargeRead:
    """Charge epoch ``epoch`` before the trainer starts it: from its reservation (``plan`` runs) or
    through the filter (``epoch`` runs, 409 budget_exceeded when it does not fit).

    Idempotent per (run, epoch): a retry finds the existing charge, returns it and writes nothing.
    """
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_write(dataset.name)
        spec, orders, dataset_id = run_spec(run), list(dataset.orders), dataset.id
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        run = session.get_one(Run, run_id, populate_existing=True)
        existing = _existing_charge(session, run_id, epoch)
        if existing is not None:
            return _charge_to_read(existing)
        _check_chargeable(run, epoch)
        rdp = epoch_rdp(spec, epoch, orders)
        if run.reservation == Reservation.epoch.value:
            _admit_epoch(dataset, run, rdp)
        entry = LedgerEntry(
            dataset_id=dataset.id,
            run_id=run.id,
            kind=EntryKind.charge.value,
            epoch=epoch,
            rdp=rdp,
            mechanism=mechanism_json(spec.epochs_mechanism(epoch, epoch + 1)),
            actor=principal.actor,
        )
        session.add(entry)
        dataset.rdp_committed = add_up(dataset.rdp_committed, rdp)
        run.epochs_charged = epoch + 1
        run.status = RunStatus.running.value
        session.flush()
        charged = _charge_to_read(entry)
    log_charge(
        dataset=dataset.name,
        run_id=run_id,
        epoch=epoch,
        ledger_entry_id=charged.ledger_entry_id,
        actor=principal.actor,
    )
    return charged


def finish_run(session: Session, run_id: int, principal: Principal) -> RunRead:
    """Finish a run, releasing the reservation of the epochs it never started (idempotent)."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_write(dataset.name)
        spec, orders, dataset_id = run_spec(run), list(dataset.orders), dataset.id
    with write_transaction(session):
        dataset = lock_dataset(session, dataset_id)
        run = session.get_one(Run, run_id, populate_existing=True)
        if run.status == RunStatus.finished.value:
            return run_to_read(run, dataset.name)
        if run.status not in _ACTIVE:
            raise RunNotActiveError(f"run {run.id} is {run.status}; there is nothing to finish")
        if run.reservation == Reservation.plan.value and run.epochs_charged < run.epochs:
            released = epochs_rdp(spec, run.epochs_charged, run.epochs, orders)
            session.add(
                LedgerEntry(
                    dataset_id=dataset.id,
                    run_id=run.id,
                    kind=EntryKind.release.value,
                    epoch=None,
                    rdp=released,
                    mechanism=mechanism_json(spec.epochs_mechanism(run.epochs_charged, run.epochs)),
                    actor=principal.actor,
                )
            )
            # Releases lower S but never bring an order back into the alive set.
            dataset.rdp_reserved = subtract_up(dataset.rdp_reserved, released)
        run.status = RunStatus.finished.value
        session.flush()
        return run_to_read(run, dataset.name)
