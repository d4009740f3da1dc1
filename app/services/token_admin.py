"""Listing and revoking API tokens (local administration through the CLI).

A token is revoked by deleting its row: :func:`app.services.tokens.authenticate` then answers 401
("unknown or revoked token") on the next request, on every replica, since each request reads the
database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import read_transaction, write_transaction
from app.errors import NotFoundError
from app.models import ApiToken
from app.schemas import Role


@dataclass(frozen=True)
class TokenInfo:
    """A token without its secret (only its hash is stored, and it is never shown)."""

    id: int
    name: str
    role: Role
    datasets: list[str]
    created_at: datetime


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        datasets=list(row.datasets),
        created_at=row.created_at,
    )


def list_tokens(session: Session) -> list[TokenInfo]:
    """Return every token, oldest first."""
    with read_transaction(session):
        return [_info(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def revoke_token(session: Session, token_id: int) -> TokenInfo:
    """Delete token ``token_id`` and return what it was (NotFoundError when there is none)."""
    with write_transaction(session):
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFoundError(f"no token {token_id}")
        info = _info(row)
        session.delete(row)
    return info
