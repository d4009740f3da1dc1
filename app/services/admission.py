"""Admitting runs: reserve a run's whole plan, check its first unit, or refuse it, atomically.

The costs are computed before the lock (they depend only on the request and the dataset's fixed
grid); the decision (:func:`app.ledger.transitions.open_run`) and the writes then happen in one
transaction holding the dataset lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import Principal
from app.db import read_transaction, write_transaction
from app.errors import BudgetExceededError, ConflictError, IdempotencyKeyReusedError
from app.ledger import compatibility, transitions
from app.ledger.budget import Admission, BudgetState
from app.ledger.costs import UnitCosts
from app.ledger.fit import WhatFits, what_fits
from app.ledger.plans import DEFAULT_MAX_NOISE_LEVELS, ChargeSpec, ReleaseSpec
from app.ledger.transitions import HoldMode, RunState, Transition
from app.models import Dataset, Run
from app.observability import AdmissionLog, FilterVerdict, observe_admission
from app.schemas import (
    AdmissionPreview,
    ApproxDpRelease,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import (
    charge_spec,
    plan_costs,
    stored_mechanism,
    translated_dp_errors,
)
from app.services.approx_release import admit_approx_release
from app.services.datasets import (
    budget_state,
    find_dataset,
    lock_dataset,
    privacy_unit_of,
    store_budget_state,
)
from app.services.ledger_writes import write_entries
from app.services.runs import (
    find_run,
    forget_old_refusals,
    new_run,
    read_run,
    request_hash,
    run_to_read,
)
from dp_core.mechanisms import neighbouring_relation


@dataclass(frozen=True)
class AdmissionRequest:
    """A run request resolved into its plan and costs (before any lock is taken)."""

    body: RunCreate
    spec: ChargeSpec
    stored: dict[str, object]
    costs: UnitCosts
    mode: HoldMode
    relation: str


def verdict(admission: Admission, orders: list[float]) -> FilterVerdict:
    """Return the plain facts of a filter decision, for the log."""
    index = admission.order_index
    return FilterVerdict(
        admitted=admission.admitted,
        order=None if index is None else float(orders[index]),
        epsilon_projected=admission.epsilon_projected,
        epsilon_remaining=admission.epsilon_remaining,
        target_epsilon=admission.state.target_epsilon,
    )


def budget_refusal(
    dataset_name: str,
    target_epsilon: float,
    admission: Admission,
    run_id: int | None,
    fits: WhatFits | None = None,
) -> BudgetExceededError:
    """Return the 409 for a request the filter refused, saying what would fit."""
    hint = "" if fits is None else fits.sentence()
    return BudgetExceededError(
        f"run does not fit the budget of {dataset_name!r}: epsilon would reach"
        f" {admission.epsilon_projected:.6g} > target {target_epsilon:g}"
        f" ({admission.epsilon_remaining:.6g} remaining){hint}",
        epsilon_projected=admission.epsilon_projected,
        epsilon_remaining=admission.epsilon_remaining,
        run_id=run_id,
        epochs_that_fit=None if fits is None else fits.epochs,
        noise_multiplier_that_fits=None if fits is None else fits.noise_multiplier,
    )


def _scoped_key(principal: Principal, key: str | None) -> str | None:
    return None if key is None else f"{principal.token_id}:{key}"


def _replayed(session: Session, key: str, body: RunCreate) -> RunRead | None:
    """Return the run an earlier request with this idempotency key created (re-raising its 409).

    The key is bound to the request: the same key with another body is 422.
    """
    with read_transaction(session):
        run = session.scalar(select(Run).where(Run.idempotency_key == key))
        if run is None:
            return None
        if run.request_hash is not None and run.request_hash != request_hash(body):
            raise IdempotencyKeyReusedError(
                f"this Idempotency-Key created run {run.id} from a different request body;"
                " use a new key for a new request"
            )
        dataset = session.get_one(Dataset, run.dataset_id)
        result = read_run(session, run, dataset)
    if run.status == RunStatus.refused.value:
        raise BudgetExceededError(
            f"run {run.id} (same Idempotency-Key) was refused: it did not fit the budget of"
            f" {dataset.name!r}",
            run_id=run.id,
        )
    return result


@observe_admission
def admit_run(
    session: Session,
    body: RunCreate,
    principal: Principal,
    *,
    dry_run: bool,
    max_noise_levels: int = DEFAULT_MAX_NOISE_LEVELS,
    idempotency_key: str | None = None,
) -> RunRead | AdmissionPreview:
    """Admit ``body`` (reserve, check or charge at once), or raise BudgetExceededError.

    A real refusal records the run as ``refused`` (no ledger entry, budget unchanged); a dry run
    writes nothing. With an ``idempotency_key``, a repeated request returns the run the first one
    created (or its refusal) and never registers a second run.
    """
    principal.require_dataset_write(body.dataset)
    key = _scoped_key(principal, idempotency_key)
    if key is not None and not dry_run:
        earlier = _replayed(session, key, body)
        if earlier is not None:
            return earlier
    mechanism = body.resolved_mechanism()
    with read_transaction(session):  # the unit is fixed at creation: no lock needed
        dataset = find_dataset(session, body.dataset)
        compatibility.check_privacy_unit(
            dataset=dataset.name, dataset_unit=privacy_unit_of(dataset), mechanism=mechanism
        )
    if isinstance(mechanism, ApproxDpRelease):
        return admit_approx_release(
            session, body, mechanism, principal, dry_run=dry_run, idempotency_key=key
        )
    request = _resolve(session, body, mechanism, max_noise_levels)
    log = AdmissionLog.for_request(
        run_name=body.name,
        mechanism=dict(request.stored),
        reservation=body.reservation.value,
        actor=principal.actor,
        dry_run=dry_run,
    )
    if dry_run:
        return _preview(session, request, log)
    try:
        return _admit(session, request, principal, log, key)
    except IntegrityError as error:  # a concurrent request with the same key won the race
        if key is None:
            raise
        earlier = _replayed(session, key, body)
        if earlier is None:
            raise ConflictError("a concurrent request with this Idempotency-Key failed") from error
        return earlier


def _resolve(
    session: Session, body: RunCreate, mechanism: object, max_noise_levels: int
) -> AdmissionRequest:
    spec = charge_spec(mechanism)  # type: ignore[arg-type]
    stored = stored_mechanism(mechanism, spec)  # type: ignore[arg-type]
    with read_transaction(session):
        orders = list(find_dataset(session, body.dataset).orders)
    costs = plan_costs(spec, orders, max_noise_levels=max_noise_levels)
    mode = HoldMode.once if isinstance(spec, ReleaseSpec) else HoldMode(body.reservation.value)
    with translated_dp_errors():
        relation = neighbouring_relation(spec.mechanism(0, spec.units))
    return AdmissionRequest(body, spec, stored, costs, mode, relation)


def _admit(
    session: Session,
    request: AdmissionRequest,
    principal: Principal,
    log: AdmissionLog,
    key: str | None,
) -> RunRead:
    body = request.body
    with write_transaction(session):
        dataset = find_dataset(session, body.dataset)
        dataset = lock_dataset(session, dataset.id)
        relation = compatibility.check_neighbouring_relation(
            dataset=dataset.name,
            dataset_relation=dataset.neighbouring_relation,
            run_relation=request.relation,
        )
        before = budget_state(dataset)
        step = transitions.open_run(before, RunState(costs=request.costs, mode=request.mode))
        run = new_run(
            body,
            dict(request.stored),
            units=request.costs.units,
            costs=request.costs,
            dataset=dataset,
            actor=principal.actor,
            idempotency_key=key,
        )
        session.add(run)
        session.flush()
        if step.refused:
            forget_old_refusals(session, dataset.id)
        else:
            dataset.neighbouring_relation = relation
            _apply(session, dataset, run, request, step, principal.actor)
        session.flush()
        result = run_to_read(run, dataset, step.run.charged)
    assert step.admission is not None
    log.log_decision(
        dataset=dataset.name, verdict=verdict(step.admission, dataset.orders), run_id=result.id
    )
    if step.refused:
        fits = what_fits(
            before,
            request.spec,
            request.costs,
            request.mode,
            list(dataset.orders),
            compatibility.unit_name(request.body.resolved_mechanism().kind),
        )
        raise budget_refusal(dataset.name, dataset.target_epsilon, step.admission, result.id, fits)
    return result


def _apply(
    session: Session,
    dataset: Dataset,
    run: Run,
    request: AdmissionRequest,
    step: Transition,
    actor: str,
) -> None:
    store_budget_state(dataset, step.budget)
    run.status = (RunStatus.finished if step.run.finished else RunStatus.admitted).value
    write_entries(session, dataset, run, request.spec, step.entries, actor)


def _preview(session: Session, request: AdmissionRequest, log: AdmissionLog) -> AdmissionPreview:
    with read_transaction(session):
        dataset = find_dataset(session, request.body.dataset)
        compatibility.check_neighbouring_relation(
            dataset=dataset.name,
            dataset_relation=dataset.neighbouring_relation,
            run_relation=request.relation,
        )
        state: BudgetState = budget_state(dataset)
    step = transitions.open_run(state, RunState(costs=request.costs, mode=request.mode))
    assert step.admission is not None
    log.log_decision(
        dataset=dataset.name, verdict=verdict(step.admission, dataset.orders), run_id=None
    )
    if step.refused or step.admission.order_index is None:
        fits = what_fits(
            state,
            request.spec,
            request.costs,
            request.mode,
            list(dataset.orders),
            compatibility.unit_name(request.body.resolved_mechanism().kind),
        )
        raise budget_refusal(dataset.name, dataset.target_epsilon, step.admission, None, fits)
    return AdmissionPreview(
        dataset=dataset.name,
        epsilon_projected=step.admission.epsilon_projected,
        epsilon_remaining=step.admission.epsilon_remaining,
        order=float(dataset.orders[step.admission.order_index]),
    )


def get_run(session: Session, run_id: int, principal: Principal) -> RunRead:
    """Return one run."""
    with read_transaction(session):
        run, dataset = find_run(session, run_id)
        principal.require_dataset_read(dataset.name)
        return read_run(session, run, dataset)
