"""Group privacy charged per run (max_records_per_individual) and audits stored with runs."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from app.models import RunAudit
from dp_core.conversion import rdp_to_epsilon
from dp_core.mechanisms import SampledGaussianSchedule
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from tests.integration.conftest import assert_charged, auth, make_dataset, run_body

pytestmark = pytest.mark.anyio

ORDERS = [1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0]


def _group_epoch(orders: list[float], k_pow2: int, *, q: float, sigma: float, steps: int) -> Any:
    """Mironov 2017 Prop. 2 written out: 3^c RDP(2^c max(beta, 2)), c = log2 of K rounded up."""
    c = int(np.log2(k_pow2))
    mechanism = SampledGaussianSchedule(
        sample_rate=q, schedule=NoiseSchedule(kind="constant", noise_multiplier=sigma), steps=steps
    )
    alphas = [2**c * max(b, 2.0) for b in orders]
    return 3**c * np.asarray(compute_rdp(mechanism, alphas))


def _audit_rows(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(RunAudit)) or 0)
    finally:
        engine.dispose()


async def test_group_run_is_charged_the_group_cost(client) -> None:
    await make_dataset(client, orders=ORDERS, target_epsilon=50.0)
    body = run_body(sample_rate=0.01, epochs=2, max_records_per_individual=3)
    created = await client.post("/v1/runs", json=body)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["max_records_per_individual"] == 3
    assert run["mechanism"]["max_records_per_individual"] == 3
    charged = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert charged.status_code == 200
    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    charge = next(e for e in ledger if e["kind"] == "charge")
    exact = _group_epoch(ORDERS, 4, q=0.01, sigma=1.0, steps=100)  # K = 3 is charged as 4
    assert_charged(charge["rdp"], exact, units=100)
    want = rdp_to_epsilon(orders=ORDERS, rdp=exact, delta=1e-5, warn=False).epsilon
    assert charged.json()["epsilon_run"] == pytest.approx(want, rel=1e-5)
    assert charged.json()["epsilon_run"] >= want


async def test_default_group_size_is_one_and_costs_unchanged(client) -> None:
    await make_dataset(client, orders=ORDERS)
    plain = (await client.post("/v1/runs", json=run_body(epochs=1))).json()
    one = (
        await client.post(
            "/v1/runs", json=run_body(name="k1", epochs=1, max_records_per_individual=1)
        )
    ).json()
    assert plain["max_records_per_individual"] == one["max_records_per_individual"] == 1
    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    reservations = [e["rdp"] for e in ledger if e["kind"] == "reservation"]
    assert reservations[0] == reservations[1]


async def test_group_size_is_validated(client, database_url) -> None:
    await make_dataset(client)
    for bad in (0, 1025, 2.0, "2"):
        response = await client.post("/v1/runs", json=run_body(max_records_per_individual=bad))
        assert response.status_code == 422, bad
        assert response.json()["code"] == "invalid_input"
    listed = (await client.get("/v1/datasets/mnist/ledger")).json()
    assert listed["total"] == 0


def _audit(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "epsilon_theoretical": 2.5,
        "epsilon_lower_bound": 0.4,
        "confidence": 0.95,
        "delta": 1e-5,
        "canaries": 256,
        "canaries_included": 130,
        "guesses": 40,
        "correct_guesses": 31,
        "canary_kind": "gradient",
        "noise_multiplier": 1.1,
        "test_accuracy": 0.91,
        "membership_inference": {
            "attack": "loss_threshold",
            "auc": 0.52,
            "tpr_at_fpr": {"0.01": 0.012, "0.001": 0.0},
            "members": 1000,
            "non_members": 500,
        },
        "seed": 7,
    }
    body.update(overrides)
    return body


async def _token(client, role: str, datasets: list[str]) -> str:
    body = {"name": f"{role}-x", "role": role, "datasets": datasets}
    response = await client.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def test_audit_round_trip_and_access(client, database_url) -> None:
    await make_dataset(client)
    await make_dataset(client, name="other")
    run = (await client.post("/v1/runs", json=run_body())).json()
    trainer = await _token(client, "trainer", ["mnist"])
    stranger = await _token(client, "trainer", ["other"])
    viewer = await _token(client, "viewer", [])

    stored = await client.post(f"/v1/runs/{run['id']}/audits", json=_audit(), headers=auth(trainer))
    assert stored.status_code == 201, stored.text
    audit = stored.json()
    assert audit["run_id"] == run["id"]
    assert audit["actor"] == "trainer:trainer-x"
    assert audit["exceeds_theoretical"] is False
    assert audit["membership_inference"]["tpr_at_fpr"] == {"0.01": 0.012, "0.001": 0.0}

    flagged = await client.post(
        f"/v1/runs/{run['id']}/audits", json=_audit(epsilon_lower_bound=3.0)
    )
    assert flagged.json()["exceeds_theoretical"] is True

    listed = await client.get(f"/v1/runs/{run['id']}/audits", headers=auth(viewer))
    assert listed.status_code == 200
    assert listed.json()["total"] == 2
    assert [a["id"] for a in listed.json()["items"]] == [audit["id"], flagged.json()["id"]]

    for token, path_ok in ((viewer, False), (stranger, False)):
        denied = await client.post(
            f"/v1/runs/{run['id']}/audits", json=_audit(), headers=auth(token)
        )
        assert (denied.status_code, denied.json()["code"]) == (403, "forbidden"), path_ok
    hidden = await client.get(f"/v1/runs/{run['id']}/audits", headers=auth(stranger))
    assert hidden.status_code == 403
    missing = await client.post("/v1/runs/999/audits", json=_audit())
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert _audit_rows(database_url) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"confidence": 1.0},
        {"confidence": 0.0},
        {"epsilon_lower_bound": -0.1},
        {"correct_guesses": 41},
        {"guesses": 257},
        {"canaries_included": 257},
        {"canary_kind": "pixel"},
        {"seed": -1},
        {"unexpected": 1},
        {"membership_inference": {"auc": 1.5, "members": 1, "non_members": 1}},
        {
            "membership_inference": {
                "auc": 0.5,
                "members": 1,
                "non_members": 1,
                "tpr_at_fpr": {"x\u202e": 0.1},
            }
        },
    ],
)
async def test_invalid_audits_write_nothing(client, database_url, change) -> None:
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    response = await client.post(f"/v1/runs/{run['id']}/audits", json=_audit(**change))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert _audit_rows(database_url) == 0


async def test_non_finite_numbers_are_refused(client, database_url) -> None:
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    for value in ("NaN", "Infinity"):
        raw = json.dumps(_audit()).replace(
            '"epsilon_lower_bound": 0.4', f'"epsilon_lower_bound": {value}'
        )
        response = await client.post(
            f"/v1/runs/{run['id']}/audits",
            content=raw.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, value
    assert _audit_rows(database_url) == 0


async def test_refused_run_takes_no_audit(client, database_url) -> None:
    await make_dataset(client, target_epsilon=0.5)
    refused = await client.post("/v1/runs", json=run_body(epochs=100))
    assert refused.status_code == 409
    run_id = refused.json()["run_id"]
    response = await client.post(f"/v1/runs/{run_id}/audits", json=_audit())
    assert (response.status_code, response.json()["code"]) == (409, "conflict")
    assert _audit_rows(database_url) == 0


async def test_run_page_shows_audits_and_group_size(client) -> None:
    await make_dataset(client, target_epsilon=50.0)
    run = (await client.post("/v1/runs", json=run_body(max_records_per_individual=2))).json()
    empty = (await client.get(f"/dashboard/runs/{run['id']}")).text
    assert "No audits of this run." in empty
    assert 'data-field="max_records_per_individual">2<' in empty
    first = (await client.post(f"/v1/runs/{run['id']}/audits", json=_audit())).json()
    broken = (
        await client.post(f"/v1/runs/{run['id']}/audits", json=_audit(epsilon_lower_bound=9.5))
    ).json()
    page = (await client.get(f"/dashboard/runs/{run['id']}")).text
    rows = re.findall(r'<tr data-audit="(\d+)"( class="alert")?>', page)
    assert rows == [(str(first["id"]), ""), (str(broken["id"]), ' class="alert"')]
    assert re.findall(r'data-field="epsilon_lower_bound">([0-9.]+)', page) == ["0.4000", "9.5000"]
    assert page.count("above theory") == 1
    plain = (await client.post("/v1/runs", json=run_body(name="plain", epochs=1))).json()
    other = (await client.get(f"/dashboard/runs/{plain['id']}")).text
    assert "max_records_per_individual" not in other and "No audits of this run." in other


async def test_refusal_hint_accounts_for_the_group(client) -> None:
    await make_dataset(client, target_epsilon=5.0)
    body = run_body(epochs=2, max_records_per_individual=4)
    refused = await client.post("/v1/runs", json=body)
    assert refused.status_code == 409
    sigma = refused.json()["noise_multiplier_that_fits"]
    assert sigma is not None and sigma > 1.0
    per_record = await client.post("/v1/runs?dry_run=true", json=run_body(epochs=2))
    assert per_record.status_code == 200  # the same plan fits per record: the hint is K's
    noise = {"schedule": "constant", "noise_multiplier": sigma, "decay_rate": 0.0}
    admitted = await client.post("/v1/runs", json={**body, "name": "fits", "noise": noise})
    assert admitted.status_code == 201, admitted.text
    assert admitted.json()["max_records_per_individual"] == 4
