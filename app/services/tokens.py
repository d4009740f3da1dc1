"""API tokens: creation, the bootstrap/initial admin token, authentication."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Principal, generate_token, hash_token
from app.db import read_transaction, write_transaction
from app.errors import AuthenticationError
from app.models import ApiToken
from app.schemas import Role, TokenCreate, TokenCreated


def _insert_token(
    session: Session, *, name: str, role: Role, datasets: list[str], token: str
) -> ApiToken:
    row = ApiToken(token_hash=hash_token(token), name=name, role=role.value, datasets=datasets)
    session.add(row)
    session.flush()
    return row


def create_token(session: Session, body: TokenCreate, principal: Principal | None) -> TokenCreated:
    """Create a token and return it in clear text (the only time it is shown).

    ``principal`` is None for the local CLI (``dpledger token create``), which has database access.
    """
    if principal is not None:
        principal.require_admin()
    token = generate_token()
    datasets = sorted(set(body.datasets))
    role = Role(body.role)
    with write_transaction(session):
        row = _insert_token(session, name=body.name, role=role, datasets=datasets, token=token)
        return TokenCreated(
            id=row.id, name=row.name, role=body.role, datasets=datasets, token=token
        )


def register_bootstrap_token(session: Session, token: str) -> None:
    """Make sure ``token`` (from DPLEDGER_BOOTSTRAP_TOKEN) is an admin token."""
    digest = hash_token(token)
    try:
        with write_transaction(session):
            if session.scalar(select(ApiToken.id).where(ApiToken.token_hash == digest)) is None:
                session.add(
                    ApiToken(
                        token_hash=digest, name="bootstrap", role=Role.admin.value, datasets=[]
                    )
                )
    except IntegrityError:
        # Another replica starting at the same moment registered it first: that is the goal.
        pass


def create_initial_token(session: Session) -> str | None:
    """When no token exists at all, create an admin token and return it (else None)."""
    with write_transaction(session):
        if session.scalar(select(exists().where(ApiToken.id.is_not(None)))):
            return None
        token = generate_token()
        _insert_token(session, name="initial-admin", role=Role.admin, datasets=[], token=token)
        return token


def authenticate(session: Session, token: str | None) -> Principal:
    """Return the caller behind a bearer token, or raise AuthenticationError."""
    if not token:
        raise AuthenticationError("missing bearer token (Authorization: Bearer <token>)")
    with read_transaction(session):
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if row is None:
            raise AuthenticationError("unknown or revoked token")
        return Principal(
            token_id=row.id, name=row.name, role=Role(row.role), datasets=frozenset(row.datasets)
        )
