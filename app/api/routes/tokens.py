"""API tokens (admin)."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import PrincipalDep, SessionDep
from app.schemas import TokenCreate, TokenCreated
from app.services import tokens

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, principal: PrincipalDep) -> TokenCreated:
    """Create a token; the response is the only time it is shown."""
    return tokens.create_token(session, body, principal)
