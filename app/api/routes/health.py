"""Liveness (no token needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import SessionDep
from app.schemas import ErrorBody, Health
from app.services.health import check_database

router = APIRouter(tags=["health"])


_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "database_unavailable (with Retry-After)"}
}


@router.get("/healthz", responses=_UNAVAILABLE)
def healthz(session: SessionDep) -> Health:
    """Answer ok when the service can reach its database (503 database_unavailable otherwise)."""
    check_database(session)
    return Health(status="ok")


@router.get("/livez")
def livez() -> Health:
    """Answer ok while the process serves requests (touches nothing; the bench's baseline)."""
    return Health(status="ok")
