"""The stored form of runs: their mechanism, its accounting view and their API view."""

from __future__ import annotations

from typing import Any

from app.models import Dataset, Run
from app.schemas import (
    AnyMechanism,
    DpSgdMechanism,
    MechanismKind,
    NoiseSpec,
    Reservation,
    RunCreate,
    RunRead,
    RunStatus,
)
from app.services.accounting import ChargeSpec, charge_spec, parse_mechanism


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
    """Return the accounting view of a stored run."""
    return charge_spec(run_mechanism(run))


def run_to_read(run: Run, dataset_name: str) -> RunRead:
    """Return the API view of a run."""
    mechanism = run_mechanism(run)
    dp_sgd = mechanism if isinstance(mechanism, DpSgdMechanism) else None
    return RunRead(
        id=run.id,
        dataset=dataset_name,
        name=run.name,
        kind=MechanismKind(mechanism.kind),
        mechanism=mechanism.model_dump(mode="json"),
        sample_rate=None if dp_sgd is None else dp_sgd.sample_rate,
        steps_per_epoch=None if dp_sgd is None else dp_sgd.steps_per_epoch,
        epochs=run.epochs,
        noise=None if dp_sgd is None else dp_sgd.noise,
        max_grad_norm=None if dp_sgd is None else dp_sgd.max_grad_norm,
        reservation=Reservation(run.reservation),
        status=RunStatus(run.status),
        epochs_charged=run.epochs_charged,
        created_at=run.created_at,
    )


def new_run(
    body: RunCreate, stored: dict[str, Any], units: int, dataset: Dataset, actor: str
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
        epochs_charged=0,
        created_by=actor,
    )
