"""Liveness (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep
from app.schemas import Health
from app.services.health import check_database

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(session: SessionDep) -> Health:
    """Answer ok when the service can reach its database."""
    check_database(session)
    return Health(status="ok")


@router.get("/livez")
def livez() -> Health:
    """Answer ok while the process serves requests (touches nothing; the bench's baseline)."""
    return Health(status="ok")
