"""Exporting a dataset's ledger for audit: one JSON object per entry, in id order, streamed.

Each line is self-contained: the entry's kind, run, epoch, its mechanism (the versioned JSON stored
with it), its RDP vector (``null`` for +inf) and the dataset's orders that vector is indexed by.
Rows are fetched in batches (a server-side cursor on PostgreSQL), so a long ledger is never held in
memory at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import read_transaction
from app.ledger import quanta
from app.models import LedgerEntry, Run
from app.services.datasets import find_dataset

BATCH_SIZE = 1000


def _rdp_json(values: Any) -> list[float | None]:
    """The entry's exact cost as floats, each rounded up (null for +inf), as the API shows it."""
    return [None if math.isinf(v) else float(v) for v in quanta.to_floats_up(values)]


def export_ledger(session: Session, name: str, write: Callable[[str], object]) -> int:
    """Write every ledger entry of dataset ``name`` through ``write`` as JSON lines; return how many.

    Raises NotFoundError for an unknown dataset before anything is written.
    """
    with read_transaction(session):
        dataset = find_dataset(session, name)
        orders = [float(order) for order in dataset.orders]
        rows = session.execute(
            select(
                LedgerEntry.id,
                LedgerEntry.run_id,
                Run.name,
                LedgerEntry.kind,
                LedgerEntry.epoch,
                LedgerEntry.rdp,
                LedgerEntry.mechanism,
                LedgerEntry.actor,
                LedgerEntry.created_at,
            )
            .join(Run, LedgerEntry.run_id == Run.id)
            .where(LedgerEntry.dataset_id == dataset.id)
            .order_by(LedgerEntry.id)
            .execution_options(yield_per=BATCH_SIZE)
        )
        count = 0
        for row in rows:
            line = {
                "id": row.id,
                "dataset": dataset.name,
                "run_id": row.run_id,
                "run_name": row.name,
                "kind": row.kind,
                "epoch": row.epoch,
                "orders": orders,
                "rdp": _rdp_json(row.rdp),
                "mechanism": row.mechanism,
                "actor": row.actor,
                "created_at": row.created_at.isoformat(),
            }
            write(json.dumps(line, allow_nan=False) + "\n")
            count += 1
        return count
