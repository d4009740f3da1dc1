"""Datasets, their budgets and their ledgers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import Limit, Offset, PrincipalDep, SessionDep
from app.schemas import BudgetRead, DatasetCreate, DatasetList, DatasetRead, LedgerEntryList
from app.services import budgets, datasets

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_dataset(
    body: DatasetCreate, session: SessionDep, principal: PrincipalDep
) -> DatasetRead:
    """Create a dataset with its budget and the admission filter's grid (admin)."""
    return datasets.create_dataset(session, body, principal)


@router.get("")
def list_datasets(
    session: SessionDep, principal: PrincipalDep, limit: Limit = 100, offset: Offset = 0
) -> DatasetList:
    """List the datasets this token may read."""
    return datasets.list_datasets(session, principal, limit=limit, offset=offset)


@router.get("/{name}")
def get_dataset(name: str, session: SessionDep, principal: PrincipalDep) -> DatasetRead:
    """Return one dataset."""
    return datasets.get_dataset(session, name, principal)


@router.get("/{name}/budget")
def get_budget(
    name: str,
    session: SessionDep,
    principal: PrincipalDep,
    runs_limit: Annotated[int, Query(ge=1, le=500, description="Runs per page.")] = 100,
    runs_after: Annotated[
        int, Query(ge=0, description="Cursor: list runs with a larger id (runs_next_after).")
    ] = 0,
) -> BudgetRead:
    """Return the dataset's budget as the admission filter sees it, with a page of its runs."""
    return budgets.get_budget(
        session, name, principal, runs_limit=runs_limit, runs_after=runs_after
    )


@router.get("/{name}/ledger")
def list_ledger(
    name: str,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Limit = 100,
    offset: Offset = 0,
    after: Annotated[
        int, Query(ge=0, description="Cursor: entries with a larger id (next_after).")
    ] = 0,
) -> LedgerEntryList:
    """Return the dataset's append-only ledger, oldest entry first (cursor: after/next_after)."""
    return budgets.list_ledger(session, name, principal, limit=limit, offset=offset, after=after)
