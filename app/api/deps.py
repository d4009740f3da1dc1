"""FastAPI dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``PrincipalDep``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.auth import Principal
from app.services.sessions import resolve_session
from app.services.tokens import authenticate
from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer <token>`.")


def get_session(request: Request) -> Iterator[Session]:
    """Yield a session from the app's factory (made in the lifespan), closed after the request."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


def get_app_settings(request: Request) -> Settings:
    """Return the settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session)]


def get_engine(request: Request) -> Engine:
    """Return the app's engine, for the charge routes (one Core transaction in one worker thread,
    no ORM session)."""
    engine: Engine = request.app.state.engine
    return engine


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Return the authenticated caller (401 without a valid bearer token)."""
    return authenticate(session, credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """Return the raw bearer token, for services that authenticate inside their own transaction
    (an epoch charge checks the token in the statement that locks the dataset). Async: no I/O,
    so no worker-thread hop."""
    return credentials.credentials if credentials else None


BearerTokenDep = Annotated[str | None, Depends(get_bearer_token)]

#: The dashboard's login cookie: a random session id, never the token (HttpOnly, SameSite=Lax;
#: set by ``POST /login``, see :mod:`app.services.sessions`).
SESSION_COOKIE = "dpledger_session"


def get_page_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    """Return the caller of a dashboard page, or None when not logged in.

    A bearer header (API clients) must be valid (401 otherwise); else the login cookie's session
    is used, and a missing, expired or revoked one means "not logged in" (the page redirects to
    the login form).
    """
    if credentials is not None:
        return authenticate(session, credentials.credentials)
    return resolve_session(session, request.cookies.get(SESSION_COOKIE))


PagePrincipalDep = Annotated[Principal | None, Depends(get_page_principal)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=2**62, description="Items to skip.")]
