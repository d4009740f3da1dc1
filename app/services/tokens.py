"""API tokens: creation, the bootstrap and first admin tokens, authentication, listing, revocation.

A revoked token keeps its row (its hash, with ``revoked_at`` set): :func:`authenticate` refuses it
on the next request on every replica (each request reads the database), and
:func:`register_bootstrap_token` never registers a revoked ``DPLEDGER_BOOTSTRAP_TOKEN`` again, so
a revocation survives restarts. Revoking a token also ends its dashboard sessions.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Principal, generate_token, hash_token
from app.db import read_transaction, write_transaction
from app.errors import AuthenticationError, InvalidInputError, NotFoundError, RateLimitedError
from app.models import ApiToken, DashboardSession, Dataset, utc_now
from app.schemas import Role, TokenCreate, TokenCreated

logger = logging.getLogger("dpledger.tokens")

BOOTSTRAP_NAME = "bootstrap"
INITIAL_NAME = "initial-admin"


@dataclass(frozen=True)
class TokenInfo:
    """A token without its secret (only its hash is stored, and it is never shown)."""

    id: int
    name: str
    role: Role
    datasets: list[str]
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiToken) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        datasets=list(row.datasets),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _insert_token(
    session: Session, *, name: str, role: Role, datasets: list[str], token: str
) -> ApiToken:
    row = ApiToken(token_hash=hash_token(token), name=name, role=role.value, datasets=datasets)
    session.add(row)
    session.flush()
    return row


def _require_existing_datasets(session: Session, names: list[str]) -> None:
    if not names:
        return
    known = set(session.scalars(select(Dataset.name).where(Dataset.name.in_(names))))
    missing = [name for name in names if name not in known]
    if missing:
        raise InvalidInputError(
            f"datasets: no dataset named {', '.join(missing)} (create it first)", missing=missing
        )


def create_token(session: Session, body: TokenCreate, principal: Principal | None) -> TokenCreated:
    """Create a token and return it in clear text (the only time it is shown).

    ``principal`` is None for the local CLI (``dpledger token create``), which has database access.
    A trainer's datasets must exist, so a token never gains access to a dataset created later.
    """
    if principal is not None:
        principal.require_admin()
    token = generate_token()
    datasets = sorted(set(body.datasets))
    role = Role(body.role)
    with write_transaction(session):
        _require_existing_datasets(session, datasets)
        row = _insert_token(session, name=body.name, role=role, datasets=datasets, token=token)
        return TokenCreated(
            id=row.id, name=row.name, role=body.role, datasets=datasets, token=token
        )


def register_bootstrap_token(session: Session, token: str) -> bool:
    """Make ``token`` (DPLEDGER_BOOTSTRAP_TOKEN) an admin token unless it is known already.

    A token that was revoked stays revoked (its hash is kept): returns False and logs a warning.
    Returns True when the token is usable.
    """
    digest = hash_token(token)
    try:
        with write_transaction(session):
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            if row is None:
                session.add(
                    ApiToken(
                        token_hash=digest, name=BOOTSTRAP_NAME, role=Role.admin.value, datasets=[]
                    )
                )
                return True
            revoked = row.revoked_at is not None
    except IntegrityError:
        # Another replica starting at the same moment registered it first: that is the goal.
        return True
    if revoked:
        logger.warning(
            "DPLEDGER_BOOTSTRAP_TOKEN was revoked and stays revoked: set a new one or unset it"
        )
    return not revoked


def create_initial_token(session: Session, deliver: Callable[[str], None]) -> bool:
    """When no token was ever created (none, not even revoked), create an admin token.

    ``deliver`` hands the token to the operator before the transaction commits: when it fails,
    nothing is stored, so the next start tries again instead of locking everyone out.
    Returns whether a token was created.
    """
    with write_transaction(session):
        if session.scalar(select(exists().where(ApiToken.id.is_not(None)))):
            return False
        token = generate_token()
        _insert_token(session, name=INITIAL_NAME, role=Role.admin, datasets=[], token=token)
        deliver(token)
        return True


def principal_of(row: ApiToken) -> Principal:
    """Return the caller a (live) token row stands for."""
    return Principal(
        token_id=row.id, name=row.name, role=Role(row.role), datasets=frozenset(row.datasets)
    )


def authenticate(session: Session, token: str | None) -> Principal:
    """Return the caller behind a bearer token, or raise AuthenticationError."""
    if not token:
        raise AuthenticationError("missing bearer token (Authorization: Bearer <token>)")
    with read_transaction(session):
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if row is None or row.revoked_at is not None:
            raise AuthenticationError("unknown or revoked token")
        return principal_of(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    """Return every token, revoked ones included, oldest first."""
    with read_transaction(session):
        return [_info(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def revoke_token(session: Session, token_id: int) -> TokenInfo:
    """Revoke token ``token_id`` and end its dashboard sessions (NotFoundError when unknown).

    Revoking a revoked token changes nothing and returns it as it is.
    """
    with write_transaction(session):
        row = session.get(ApiToken, token_id)
        if row is None:
            raise NotFoundError(f"no token {token_id}")
        if row.revoked_at is None:
            row.revoked_at = utc_now()
        session.execute(delete(DashboardSession).where(DashboardSession.token_id == token_id))
        session.flush()
        return _info(row)


class RateLimiter:
    """A token bucket per API token: ``burst`` requests at once, then ``rate_per_s`` a second.

    Per process: with N replicas a token may make N times as many requests. That is still safe:
    the limit protects each process's CPU (each replica has its own bucket), and what a flood of
    requests could store is bounded elsewhere (refused runs beyond the last few are forgotten).
    A rate of 0 disables the limit.
    """

    def __init__(
        self, *, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # token id -> (level, when)
        self._lock = threading.Lock()

    def take(self, token_id: int) -> None:
        """Spend one request of ``token_id``'s bucket, or raise RateLimitedError (429)."""
        if self.rate_per_s <= 0:
            return
        with self._lock:
            now = self._clock()
            level, when = self._buckets.get(token_id, (float(self.burst), now))
            level = min(float(self.burst), level + (now - when) * self.rate_per_s)
            if level < 1.0:
                self._buckets[token_id] = (level, now)
                wait = math.ceil((1.0 - level) / self.rate_per_s)
                raise RateLimitedError(
                    f"too many run requests from this token; retry in {wait} s",
                    retry_after_s=wait,
                )
            self._buckets[token_id] = (level - 1.0, now)
