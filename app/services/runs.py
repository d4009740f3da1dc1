"""The stored form of runs: their mechanism, its plan and costs, their charges and API view."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, select, update
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.ledger import quanta, readouts
from app.ledger.costs import UnitCosts
from app.ledger.plans import ChargeSpec
from app.ledger.transitions import EntryKind, HoldMode, RunState
from app.models import Dataset, LedgerEntry, Run, RunAudit
from app.schemas import (
    AnyMechanism,
    ApproxDpRelease,
    DpSgdMechanism,
    MechanismKind,
    NoiseSpec,
    Reservation,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import (
    charge_spec,
    parse_mechanism,
    plan_costs,
)

#: Costs of runs stored before costs were (legacy rows) are recomputed with no level limit.
_NO_LIMIT = 10**12


def run_mechanism(run: Run) -> AnyMechanism:
    """Return the stored mechanism of a run (rebuilt from the DP-SGD columns for old rows)."""
    if run.spec is not None:
        return parse_mechanism(run.spec)
    assert run.sample_rate is not None and run.noise_schedule is not None
    assert run.noise_multiplier is not None and run.decay_rate is not None
    return DpSgdMechanism(
        kind="dp_sgd",
        sample_rate=run.sample_rate,
        steps_per_epoch=run.steps_per_epoch,
        epochs=run.epochs,
        noise=NoiseSpec(
            schedule=run.noise_schedule,
            noise_multiplier=run.noise_multiplier,
            decay_rate=run.decay_rate,
        ),
        max_grad_norm=run.max_grad_norm,
    )


def run_spec(run: Run) -> ChargeSpec:
    """Return the plan of a stored run (not for approximate-DP releases)."""
    return charge_spec(run_mechanism(run))


def run_costs(run: Run, orders: list[float]) -> UnitCosts:
    """Return the per-unit costs fixed at admission (computed again for legacy rows)."""
    if run.costs is not None:
        return UnitCosts.from_json(run.costs)
    if run.kind == MechanismKind.approx_dp_release.value:  # no RDP curve: charged elsewhere
        return UnitCosts.uniform(quanta.zeros(len(orders)), 1)
    return plan_costs(run_spec(run), orders, max_noise_levels=_NO_LIMIT)


def run_state(run: Run, costs: UnitCosts, charged: int) -> RunState:
    """Return the ledger's view of a stored run."""
    mode = HoldMode.once if run.kind in _ONCE_KINDS else HoldMode(run.reservation)
    return RunState(
        costs=costs,
        mode=mode,
        charged=charged,
        open=run.status == RunStatus.admitted.value,
        finished=run.status == RunStatus.finished.value,
    )


_ONCE_KINDS = frozenset(
    {
        MechanismKind.laplace_release.value,
        MechanismKind.gaussian_release.value,
        MechanismKind.approx_dp_release.value,
    }
)


def charged_units(session: Session, run_ids: Iterable[int]) -> dict[int, int]:
    """Return how many units each run charged (read from its charges; absent = 0)."""
    ids = list(run_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(LedgerEntry.run_id, func.max(LedgerEntry.epoch))
        .where(LedgerEntry.run_id.in_(ids), LedgerEntry.kind == EntryKind.charge.value)
        .group_by(LedgerEntry.run_id)
    )
    return {run_id: int(last) + 1 for run_id, last in rows if last is not None}


def run_epsilon(run: Run, dataset: Dataset, charged: int) -> float | None:
    """Return the run's own epsilon: its charges alone, converted at the dataset's delta.

    This is what a plain RDP accountant (Opacus) prints for the run. An approximate-DP release
    has no RDP curve: its epsilon is the one it declared. Nothing charged: 0.
    """
    if charged == 0:
        return 0.0
    mechanism = run_mechanism(run)
    if isinstance(mechanism, ApproxDpRelease):
        return mechanism.epsilon
    costs = run_costs(run, list(dataset.orders))
    return readouts.run_epsilon(
        orders=dataset.orders, costs=costs, units=charged, delta=dataset.target_delta
    ).epsilon


def api_status(run: Run, charged: int) -> RunStatus:
    """Return the run's status as the API shows it: an admitted run that charged is running."""
    if run.status == RunStatus.admitted.value and charged > 0:
        return RunStatus.running
    return RunStatus(run.status)


def run_to_read(run: Run, dataset: Dataset, charged: int) -> RunRead:
    """Return the API view of a run that charged ``charged`` units."""
    mechanism = run_mechanism(run)
    dp_sgd = mechanism if isinstance(mechanism, DpSgdMechanism) else None
    return RunRead(
        id=run.id,
        dataset=dataset.name,
        name=run.name,
        kind=MechanismKind(mechanism.kind),
        mechanism=mechanism.model_dump(mode="json"),
        sample_rate=None if dp_sgd is None else dp_sgd.sample_rate,
        steps_per_epoch=None if dp_sgd is None else dp_sgd.steps_per_epoch,
        epochs=run.epochs,
        noise=None if dp_sgd is None else dp_sgd.noise,
        max_grad_norm=None if dp_sgd is None else dp_sgd.max_grad_norm,
        max_records_per_individual=None if dp_sgd is None else dp_sgd.max_records_per_individual,
        reservation=Reservation(run.reservation),
        status=api_status(run, charged),
        epochs_charged=charged,
        epsilon_run=run_epsilon(run, dataset, charged),
        created_at=run.created_at,
        reproducible_noise=bool(run.reproducible_noise),
    )


def find_run(session: Session, run_id: int) -> tuple[Run, Dataset]:
    """Return the run and its dataset or raise NotFoundError."""
    row = session.execute(
        select(Run, Dataset).join(Dataset, Run.dataset_id == Dataset.id).where(Run.id == run_id)
    ).first()
    if row is None:
        raise NotFoundError(f"no run {run_id}")
    return row[0], row[1]


def read_run(session: Session, run: Run, dataset: Dataset) -> RunRead:
    """Return the API view of one run, reading its charges."""
    return run_to_read(run, dataset, charged_units(session, [run.id]).get(run.id, 0))


def request_hash(body: RunCreate) -> str:
    """Return the SHA-256 of the request's canonical JSON (what an Idempotency-Key is bound to).

    Computed from the parsed body with its defaults, so two spellings of one request (key order,
    whitespace, an omitted default) are the same request.
    """
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def new_run(
    body: RunCreate,
    stored: dict[str, Any],
    *,
    units: int,
    costs: UnitCosts | None,
    dataset: Dataset,
    actor: str,
    idempotency_key: str | None,
) -> Run:
    """Return the row of a new run (status ``refused`` until admission says otherwise).

    The DP-SGD columns repeat the stored mechanism's fields; they stay null for other kinds.
    """
    noise: dict[str, Any] = stored.get("noise") or {}
    return Run(
        dataset_id=dataset.id,
        name=body.name,
        kind=stored["kind"],
        spec=stored,
        sample_rate=stored.get("sample_rate"),
        steps_per_epoch=stored.get("steps_per_epoch"),
        epochs=units,
        noise_schedule=noise.get("schedule"),
        noise_multiplier=noise.get("noise_multiplier"),
        decay_rate=noise.get("decay_rate"),
        max_grad_norm=stored.get("max_grad_norm"),
        reservation=body.reservation.value,
        status=RunStatus.refused.value,
        costs=None if costs is None else costs.to_json(),
        idempotency_key=idempotency_key,
        request_hash=None if idempotency_key is None else request_hash(body),
        created_by=actor,
        reproducible_noise=body.reproducible_noise,
    )


#: How many refused runs each dataset keeps (the newest); older ones are deleted and counted in
#: ``datasets.refused_runs_forgotten``, so refusals cost bounded storage and listings.
REFUSED_RUNS_KEPT = 100


def forget_old_refusals(session: Session, dataset_id: int) -> int:
    """Delete the dataset's refused runs beyond the newest ``keep`` and count them (call it in the
    refusing transaction, under the dataset lock). A refused run has no ledger entry; one with an
    audit is kept. Returns how many were deleted."""
    keep = REFUSED_RUNS_KEPT
    boundary = session.scalar(
        select(Run.id)
        .where(Run.dataset_id == dataset_id, Run.status == RunStatus.refused.value)
        .order_by(Run.id.desc())
        .offset(keep)
        .limit(1)
    )
    if boundary is None:
        return 0
    result = session.execute(
        delete(Run).where(
            Run.dataset_id == dataset_id,
            Run.status == RunStatus.refused.value,
            Run.id <= boundary,
            ~exists().where(RunAudit.run_id == Run.id),
        )
    )
    deleted = int(cast(CursorResult[Any], result).rowcount)
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(refused_runs_forgotten=Dataset.refused_runs_forgotten + deleted)
    )
    return int(deleted)


def refused_runs_total(session: Session, dataset: Dataset) -> int:
    """Return how many runs the dataset ever refused (kept plus forgotten)."""
    kept = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.dataset_id == dataset.id, Run.status == RunStatus.refused.value)
    )
    return int(kept or 0) + int(dataset.refused_runs_forgotten or 0)
