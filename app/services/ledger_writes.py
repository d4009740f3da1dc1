"""Writing a transition's ledger entries: each with its exact cost and mechanism record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from app.ledger.plans import ChargeSpec
from app.ledger.transitions import Entry, EntryKind
from app.models import Dataset, LedgerEntry, Run
from app.services.accounting import mechanism_json


def entry_mechanism(spec: ChargeSpec, entry: Entry) -> dict[str, Any]:
    """Return the versioned JSON record of what the entry's units execute."""
    return mechanism_json(spec.mechanism(entry.start, entry.stop))


def ledger_row(
    dataset: Dataset, run: Run, entry: Entry, mechanism: dict[str, Any], actor: str
) -> LedgerEntry:
    """Return the row of one entry."""
    return LedgerEntry(
        dataset_id=dataset.id,
        run_id=run.id,
        kind=entry.kind.value,
        epoch=entry.unit if entry.kind is EntryKind.charge else None,
        rdp=entry.cost,
        mechanism=mechanism,
        actor=actor,
    )


def write_entries(
    session: Session,
    dataset: Dataset,
    run: Run,
    spec: ChargeSpec,
    entries: Iterable[Entry],
    actor: str,
) -> list[LedgerEntry]:
    """Add the rows of ``entries`` to the session (the caller's transaction commits them)."""
    rows = [ledger_row(dataset, run, e, entry_mechanism(spec, e), actor) for e in entries]
    session.add_all(rows)
    return rows
