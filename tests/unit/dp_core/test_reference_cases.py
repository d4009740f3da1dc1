"""Peer reference values vendored in data/public_cases.json (provenance in data/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dp_core
from dp_core.rdp.orders import DEFAULT_ORDERS, DP_ACCOUNTING_ORDERS

REFERENCE = Path(__file__).resolve().parent / "data" / "public_cases.json"


def load_cases() -> list[dict]:
    with REFERENCE.open() as handle:
        return list(json.load(handle)["cases"])


CASES = load_cases()


def case_id(case: dict) -> str:
    return f"q{case['sample_rate']:.4g}-s{case['noise_multiplier']}-T{case['steps']}-{case['schedule']}"


def test_reference_file_is_vendored_with_its_provenance():
    data = json.loads(REFERENCE.read_text())
    assert "dp_accounting 0.6.0" in data["_provenance"] and "Opacus 1.6.0" in data["_provenance"]
    assert len(CASES) >= 10
    assert {case["schedule"] for case in CASES} > {"constant"}  # decaying noise is covered too


def report_for(case: dict, orders: object = None) -> dp_core.EpsilonReport:
    return dp_core.compute_epsilon(
        sample_rate=case["sample_rate"],
        noise_multiplier=case["noise_multiplier"],
        steps=case["steps"],
        delta=case["delta"],
        schedule=case["schedule"],
        decay_rate=case["decay_rate"],
        orders=orders,
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_grid_epsilon_matches_exact_reference(case):
    report = report_for(case, DP_ACCOUNTING_ORDERS)
    assert report.epsilon_grid == pytest.approx(case["epsilon"], rel=1e-6)
    assert report.order_grid == pytest.approx(case["optimal_order"])
    # Refining over real orders only ever helps, and we are never worse than dp_accounting.
    assert report.epsilon <= report.epsilon_grid
    assert report.epsilon_grid <= case["epsilon_dp_accounting"] * (1 + 1e-9)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_default_grid_is_never_worse(case):
    report = report_for(case)
    assert set(DP_ACCOUNTING_ORDERS) <= set(DEFAULT_ORDERS)
    assert report.epsilon_grid <= case["epsilon"] * (1 + 1e-9)
    assert not report.at_grid_edge
