"""Runs: admission, per-epoch (per-batch) charges, finishing."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import (
    BearerTokenDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    get_engine,
)
from app.schemas import (
    AdmissionPreview,
    AuditCreate,
    AuditList,
    AuditRead,
    BatchCharge,
    BatchChargeRead,
    EpochCharge,
    EpochChargeRead,
    ErrorBody,
    Role,
    RunCreate,
    RunRead,
    StatementRead,
)
from app.services import admission, audits, charging, statement

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description=(
            "A client-chosen key (e.g. a UUID): a repeated request with the same key and token"
            " returns the run the first one created instead of registering a second run; the"
            " same key with a different body is 422 idempotency_key_reused."
        ),
    ),
]
_CONFLICT: dict[int | str, dict[str, Any]] = {status.HTTP_409_CONFLICT: {"model": ErrorBody}}
_CREATE: dict[int | str, dict[str, Any]] = {
    **_CONFLICT,
    status.HTTP_429_TOO_MANY_REQUESTS: {"model": ErrorBody, "description": "rate_limited"},
}


@router.post("", status_code=status.HTTP_201_CREATED, responses=_CREATE)
def create_run(
    body: RunCreate,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    response: Response,
    request: Request,
    dry_run: Annotated[bool, Query(description="Answer without writing anything.")] = False,
    idempotency_key: IdempotencyKey = None,
) -> RunRead | AdmissionPreview:
    """Admit a run by reserving its planned RDP curve (409 budget_exceeded if it does not fit).

    DP-SGD runs (top-level fields or ``mechanism.kind=dp_sgd``) and PATE jobs reserve their plan;
    Laplace, Gaussian and approximate-DP releases are admitted and charged at once. A refusal
    says how many epochs would fit and which noise multiplier would fit all of them.
    """
    if principal.role is not Role.admin:  # an admin can mint tokens: a limit would not bind it
        request.app.state.run_limiter.take(principal.token_id)
    result = admission.admit_run(
        session,
        body,
        principal,
        dry_run=dry_run,
        max_noise_levels=settings.max_noise_levels,
        idempotency_key=idempotency_key,
    )
    if dry_run:
        response.status_code = status.HTTP_200_OK
    return result


@router.get("/{run_id}")
def get_run(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> RunRead:
    """Return one run."""
    return admission.get_run(session, run_id, principal)


@router.get("/{run_id}/statement")
def get_run_statement(
    run_id: RunId,
    session: SessionDep,
    principal: PrincipalDep,
    records_per_user: Annotated[
        int,
        Query(
            ge=1,
            le=statement.MAX_RECORDS_PER_USER,
            description="K: user-level epsilon for users with up to K records.",
        ),
    ] = 1,
) -> StatementRead:
    """Return the run's privacy statement: what was trained, its epsilons, the dataset's spend.

    The run's own epsilon by RDP (naming the order) and by PLD for the units it charged, the
    once-per-epoch guarantee, the user-level epsilon for K records, and the dataset's spent
    epsilon across all runs (the filter's guarantee, as the budget endpoint reports it).
    """
    return statement.get_statement(session, run_id, principal, records_per_user=records_per_user)


@router.post("/{run_id}/epochs", responses=_CONFLICT)
async def charge_epoch(
    run_id: RunId, body: EpochCharge, request: Request, token: BearerTokenDep
) -> EpochChargeRead:
    """Charge epoch ``epoch`` before the trainer starts it (idempotent per run and epoch)."""
    return await run_in_threadpool(
        charging.charge_unit, get_engine(request), run_id, body.epoch, token
    )


@router.post("/{run_id}/batches", responses=_CONFLICT)
async def charge_batch(
    run_id: RunId, body: BatchCharge, request: Request, token: BearerTokenDep
) -> BatchChargeRead:
    """Charge batch ``batch`` of a PATE job before answering its queries (as epochs for DP-SGD)."""
    charged = await run_in_threadpool(
        partial(charging.charge_unit, route="batches"),
        get_engine(request),
        run_id,
        body.batch,
        token,
    )
    return BatchChargeRead(
        run_id=charged.run_id,
        batch=charged.epoch,
        ledger_entry_id=charged.ledger_entry_id,
        created_at=charged.created_at,
        epsilon_run=charged.epsilon_run,
    )


@router.post("/{run_id}/finish", responses=_CONFLICT)
def finish_run(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> RunRead:
    """Finish the run and release the reservation of the epochs it never started."""
    return charging.finish_run(session, run_id, principal)


@router.post("/{run_id}/audits", status_code=status.HTTP_201_CREATED, responses=_CONFLICT)
def add_audit(
    run_id: RunId, body: AuditCreate, session: SessionDep, principal: PrincipalDep
) -> AuditRead:
    """Store an empirical privacy audit of the run (a trainer or admin of its dataset).

    The audit never changes the budget; ``exceeds_theoretical`` flags a lower bound above the
    run's theoretical epsilon.
    """
    return audits.add_audit(session, run_id, body, principal)


@router.get("/{run_id}/audits")
def list_audits(run_id: RunId, session: SessionDep, principal: PrincipalDep) -> AuditList:
    """Return the run's audits, oldest first."""
    return audits.list_audits(session, run_id, principal)
