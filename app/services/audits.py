"""Empirical privacy audits stored with runs: add one (writers of the dataset), list them (readers).

An audit is a report about a run, never a charge: it changes no budget. The run must have been
admitted (a refused run never trained, so there is nothing to audit).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import ConflictError
from app.models import RunAudit
from app.schemas import AuditCreate, AuditList, AuditRead, RunStatus
from app.services.runs import find_run

#: At most this many audits are kept per run (each a few hundred bytes).
MAX_AUDITS_PER_RUN = 100


def audit_to_read(row: RunAudit) -> AuditRead:
    """Return the API view of a stored audit."""
    theory = row.epsilon_theoretical
    return AuditRead(
        id=row.id,
        run_id=row.run_id,
        epsilon_theoretical=theory,
        epsilon_lower_bound=row.epsilon_lower_bound,
        exceeds_theoretical=theory is not None and row.epsilon_lower_bound > theory,
        confidence=row.confidence,
        delta=row.delta,
        canaries=row.canaries,
        canaries_included=row.canaries_included,
        guesses=row.guesses,
        correct_guesses=row.correct_guesses,
        canary_kind=row.canary_kind,
        noise_multiplier=row.noise_multiplier,
        test_accuracy=row.test_accuracy,
        membership_inference=row.membership_inference,
        seed=row.seed,
        created_at=row.created_at,
        actor=row.actor,
    )


def add_audit(session: Session, run_id: int, body: AuditCreate, principal: Principal) -> AuditRead:
    """Store ``body`` as an audit of run ``run_id`` (the caller may write to its dataset)."""
    with write_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_write(dataset.name)
        if run.status == RunStatus.refused.value:
            raise ConflictError(f"run {run_id} was refused: it never trained, so it has no audit")
        if _count(session, run_id) >= MAX_AUDITS_PER_RUN:
            raise ConflictError(f"run {run_id} already has {MAX_AUDITS_PER_RUN} audits")
        row = RunAudit(
            run_id=run.id,
            **body.model_dump(exclude={"membership_inference"}),
            membership_inference=None
            if body.membership_inference is None
            else body.membership_inference.model_dump(mode="json"),
            actor=principal.actor,
        )
        session.add(row)
        session.flush()
        return audit_to_read(row)


def list_audits(session: Session, run_id: int, principal: Principal) -> AuditList:
    """Return the audits of run ``run_id``, oldest first (the caller may read its dataset)."""
    with read_transaction(session):
        _, dataset = find_run(session, run_id)
        principal.require_dataset_read(dataset.name)
        rows = run_audits(session, run_id)
        return AuditList(items=[audit_to_read(r) for r in rows], total=len(rows))


def run_audits(session: Session, run_id: int) -> list[RunAudit]:
    """Return the stored audits of a run, oldest first (no access check: the caller's job)."""
    query = select(RunAudit).where(RunAudit.run_id == run_id).order_by(RunAudit.id)
    return list(session.scalars(query).all())


def _count(session: Session, run_id: int) -> int:
    query = select(func.count()).select_from(RunAudit).where(RunAudit.run_id == run_id)
    return int(session.scalar(query) or 0)
