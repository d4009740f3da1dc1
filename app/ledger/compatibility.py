"""What may share one budget: the privacy unit, the neighbouring relation, the unit of charge.

A dataset's budget states one guarantee: (eps_G, delta_G)-DP for one *unit* (an example, or a
user with all their records) under one *neighbouring relation* (add/remove one unit, or replace
one unit by another). RDP curves stated for different units or relations do not add up to a
guarantee for either, so a dataset admits only runs of its own unit and, from its first
admitted run on, of that run's relation. Pure functions: the services load the facts, call
these, and save.
"""

from __future__ import annotations

from app.errors import (
    NeighbouringRelationMismatchError,
    PrivacyUnitMismatchError,
    UnitMismatchError,
)
from app.schemas import AnyMechanism, DpFedAvgMechanism, DpSgdMechanism, TuningMechanism
from dp_core.mechanisms import ADD_REMOVE, REPLACE_ONE

__all__ = [
    "ADD_REMOVE",
    "REPLACE_ONE",
    "check_neighbouring_relation",
    "check_privacy_unit",
    "check_unit_route",
    "protected_unit",
    "unit_name",
]


def protected_unit(mechanism: AnyMechanism) -> str:
    """Return what one unit of ``mechanism``'s guarantee protects: "example" or "user".

    DP-FedAvg protects a user; DP-SGD says so itself (``privacy_unit``); a tuning job protects
    what its base protects (every candidate is bounded by the base); PATE and releases protect
    an example.
    """
    if isinstance(mechanism, DpFedAvgMechanism):
        return "user"
    if isinstance(mechanism, TuningMechanism):
        return protected_unit(mechanism.base)
    if isinstance(mechanism, DpSgdMechanism):
        return mechanism.privacy_unit
    return "example"


def check_privacy_unit(*, dataset: str, dataset_unit: str, mechanism: AnyMechanism) -> None:
    """Refuse a run whose mechanism protects another unit than the dataset declares (409)."""
    wanted = protected_unit(mechanism)
    if wanted != dataset_unit:
        raise PrivacyUnitMismatchError(
            f"dataset {dataset!r} protects one {dataset_unit} per unit of privacy, but this"
            f" {mechanism.kind} run protects one {wanted}; create a dataset with"
            f" privacy_unit={wanted!r} for it",
            dataset_privacy_unit=dataset_unit,
            run_privacy_unit=wanted,
        )


_RELATION_WORDS = {
    ADD_REMOVE: "add/remove-one (Poisson sampling, full-batch mechanisms, releases)",
    REPLACE_ONE: "replace-one (fixed-size sampling without replacement)",
}


def check_neighbouring_relation(
    *, dataset: str, dataset_relation: str | None, run_relation: str
) -> str:
    """Return the dataset's relation after admitting a run of ``run_relation``, or refuse (409).

    ``dataset_relation`` is None until the dataset's first admitted run fixes it.
    """
    if dataset_relation is None or dataset_relation == run_relation:
        return run_relation
    raise NeighbouringRelationMismatchError(
        f"dataset {dataset!r} states its guarantee under {_RELATION_WORDS[dataset_relation]}"
        f" neighbours, but this run's accounting is under {_RELATION_WORDS[run_relation]}"
        " neighbours: their RDP curves do not compose into either guarantee; use a separate"
        " dataset (or the same sampling as the dataset's runs)",
        dataset_neighbouring_relation=dataset_relation,
        run_neighbouring_relation=run_relation,
    )


#: The unit of charge of each kind: PATE is charged per batch of queries, DP-FedAvg per round,
#: everything else per epoch (a tuning job's single unit is charged as epoch 0).
_UNIT_NAMES = {"pate": "batch", "dp_fedavg": "round"}


def unit_name(kind: str) -> str:
    """Return what a unit of charge of ``kind`` is called ("epoch", "batch" or "round")."""
    return _UNIT_NAMES.get(kind, "epoch")


def check_unit_route(*, run_id: int, kind: str, route: str) -> None:
    """Refuse a charge sent to the other charge route (409): batches are PATE's, epochs the rest's.

    ``route`` is "batches" or "epochs" (rounds of DP-FedAvg are charged on "epochs").
    """
    wanted = "batches" if kind == "pate" else "epochs"
    if route != wanted:
        raise UnitMismatchError(
            f"run {run_id} is a {kind} run, charged per {unit_name(kind)}:"
            f" use POST /v1/runs/{run_id}/{wanted}",
            kind=kind,
        )
