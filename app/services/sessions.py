"""Dashboard logins: a random session id in the cookie, its SHA-256 hash in the database.

The cookie never holds the API token. A session expires (``DPLEDGER_SESSION_MAX_AGE_S``), ends at
logout, and ends with its token: :func:`app.services.tokens.revoke_token` deletes the token's
sessions, and :func:`resolve_session` also checks the token is still live.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth import Principal, hash_token
from app.db import read_transaction, write_transaction
from app.models import ApiToken, DashboardSession, utc_now
from app.services.tokens import principal_of

#: Longer cookies cannot be session ids; they are refused without hashing.
MAX_SESSION_ID_LENGTH = 128


def start_session(session: Session, principal: Principal, *, max_age_s: int) -> str:
    """Store a new dashboard session for ``principal``'s token and return its id (the cookie)."""
    session_id = secrets.token_urlsafe(32)
    now = utc_now()
    with write_transaction(session):
        # Expired sessions of this token are swept here, so the table does not grow forever.
        session.execute(
            delete(DashboardSession).where(
                DashboardSession.token_id == principal.token_id,
                DashboardSession.expires_at <= now,
            )
        )
        session.add(
            DashboardSession(
                session_hash=hash_token(session_id),
                token_id=principal.token_id,
                created_at=now,
                expires_at=now + timedelta(seconds=max_age_s),
            )
        )
    return session_id


def resolve_session(session: Session, session_id: str | None) -> Principal | None:
    """Return the caller of a live, unexpired session of a live token, else None."""
    if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        return None
    with read_transaction(session):
        row = session.execute(
            select(DashboardSession, ApiToken)
            .join(ApiToken, ApiToken.id == DashboardSession.token_id)
            .where(DashboardSession.session_hash == hash_token(session_id))
        ).one_or_none()
        if row is None:
            return None
        login, token = row
        if login.expires_at <= utc_now() or token.revoked_at is not None:
            return None
        return principal_of(token)


def end_session(session: Session, session_id: str | None) -> None:
    """Delete the session (logout); unknown ids are ignored."""
    if not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        return
    with write_transaction(session):
        session.execute(
            delete(DashboardSession).where(DashboardSession.session_hash == hash_token(session_id))
        )
