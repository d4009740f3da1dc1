"""openapi.yaml at the repository root is the app's spec, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from app.main import create_app
from app.settings import Settings

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def test_openapi_yaml_matches_the_app():
    app_spec = json.loads(json.dumps(create_app(Settings(migrate_on_start=False)).openapi()))
    file_spec = yaml.safe_load(SPEC.read_text())
    assert file_spec == app_spec, "openapi.yaml drifted from the app: run `make openapi`"


def test_contract_field_names():
    spec = yaml.safe_load(SPEC.read_text())
    schemas = spec["components"]["schemas"]
    assert {"target_epsilon", "target_delta", "orders", "weights"} <= set(
        schemas["DatasetCreate"]["properties"]
    )
    assert {"sample_rate", "steps_per_epoch", "epochs", "noise", "max_grad_norm"} <= set(
        schemas["RunCreate"]["properties"]
    )
    assert {"id", "status", "epochs_charged", "dataset"} <= set(schemas["RunRead"]["properties"])
    budget = set(schemas["BudgetRead"]["properties"])
    assert {
        "epsilon_spent",
        "epsilon_reserved",
        "epsilon_remaining",
        "epsilon_non_adaptive",
    } <= budget
    paths = set(spec["paths"])
    assert {
        "/v1/datasets",
        "/v1/datasets/{name}",
        "/v1/datasets/{name}/budget",
        "/v1/datasets/{name}/ledger",
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/epochs",
        "/v1/runs/{run_id}/finish",
        "/v1/accountant/epsilon",
        "/v1/accountant/noise-multiplier",
        "/healthz",
    } <= paths
