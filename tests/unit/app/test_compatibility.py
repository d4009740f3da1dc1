"""app.ledger.compatibility: privacy unit, neighbouring relation and unit routes (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import (
    NeighbouringRelationMismatchError,
    PrivacyUnitMismatchError,
    UnitMismatchError,
)
from app.ledger.compatibility import (
    ADD_REMOVE,
    REPLACE_ONE,
    check_neighbouring_relation,
    check_privacy_unit,
    check_unit_route,
    protected_unit,
    unit_name,
)
from app.schemas import DpFedAvgMechanism, DpSgdMechanism, PateMechanism, TuningMechanism

BASE = {"kind": "dp_sgd", "sample_rate": 0.01, "epochs": 2, "noise": {"noise_multiplier": 1.0}}


def _sgd(unit: str) -> DpSgdMechanism:
    return DpSgdMechanism.model_validate({**BASE, "privacy_unit": unit})


@given(st.sampled_from(["example", "user"]), st.integers(min_value=0, max_value=4))
def test_tuning_protects_its_base_unit_however_deeply_nested(unit, depth):
    # A tuning job's base is DP-SGD; nesting is through the base only, so depth is one level,
    # but every level of the check must read the base's unit, never a default.
    mechanism = TuningMechanism.model_validate(
        {
            "kind": "tuning",
            "base": _sgd(unit).model_dump(),
            "candidates": 2 + depth,
            "distribution": "negative_binomial",
        }  # fmt: skip
    )
    assert protected_unit(mechanism) == unit


def test_fedavg_protects_users_and_pate_examples():
    fedavg = DpFedAvgMechanism.model_validate(
        {
            "kind": "dp_fedavg",
            "users": 10,
            "sample_rate": 0.5,
            "rounds": 1,
            "noise_multiplier": 1.0,
            "clip": 1.0,
        }  # fmt: skip
    )
    pate = PateMechanism.model_validate(
        {"kind": "pate", "aggregator": "gnmax", "noise_multiplier": 3.0, "queries": 1}
    )
    assert (protected_unit(fedavg), protected_unit(pate)) == ("user", "example")
    check_privacy_unit(dataset="d", dataset_unit="user", mechanism=fedavg)
    with pytest.raises(PrivacyUnitMismatchError):
        check_privacy_unit(dataset="d", dataset_unit="user", mechanism=pate)


@pytest.mark.parametrize("relation", [ADD_REMOVE, REPLACE_ONE])
def test_the_first_run_fixes_the_relation_and_the_other_is_refused(relation):
    assert check_neighbouring_relation(dataset="d", dataset_relation=None, run_relation=relation)
    same = check_neighbouring_relation(
        dataset="d", dataset_relation=relation, run_relation=relation
    )
    assert same == relation
    other = REPLACE_ONE if relation == ADD_REMOVE else ADD_REMOVE
    with pytest.raises(NeighbouringRelationMismatchError) as refused:
        check_neighbouring_relation(dataset="d", dataset_relation=relation, run_relation=other)
    assert refused.value.details["dataset_neighbouring_relation"] == relation


@pytest.mark.parametrize(
    ("kind", "unit", "route"),
    [
        ("pate", "batch", "batches"),
        ("dp_sgd", "epoch", "epochs"),
        ("tuning", "epoch", "epochs"),
        ("dp_fedavg", "round", "epochs"),
    ],  # fmt: skip
)
def test_each_kind_is_charged_on_its_own_route(kind, unit, route):
    assert unit_name(kind) == unit
    check_unit_route(run_id=1, kind=kind, route=route)
    other = "epochs" if route == "batches" else "batches"
    with pytest.raises(UnitMismatchError, match=route):
        check_unit_route(run_id=1, kind=kind, route=other)
