"""Service health."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db import read_transaction


def check_database(session: Session) -> None:
    """Run a trivial query (raises if the database is unreachable)."""
    with read_transaction(session):
        session.execute(text("SELECT 1"))
