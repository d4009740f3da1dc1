"""Stateless accountant endpoints: the same answers as dp_core's facade (and so the CLI)."""

from __future__ import annotations

import pytest

import dp_core
from app.services import accounting
from tests.integration.conftest import snapshot

pytestmark = pytest.mark.anyio


async def test_epsilon_matches_the_facade(client):
    body = {"sample_rate": 250 / 60000, "noise_multiplier": 1.3, "steps": 720, "delta": 1e-5}
    response = await client.post("/v1/accountant/epsilon", json=body)
    assert response.status_code == 200, response.text
    expected = dp_core.compute_epsilon(**body)
    got = response.json()
    assert got["epsilon"] == expected.epsilon
    assert got["epsilon_grid"] == expected.epsilon_grid
    assert got["order"] == expected.order
    assert (got["delta"], got["steps"]) == (1e-5, 720)
    # `epsilon` stays the RDP value, labelled again beside the PLD one (as `dpledger epsilon`).
    assert got["epsilon_rdp"] == got["epsilon"]
    assert got["epsilon_pld"] == dp_core.compute_epsilon_pld(**body).epsilon < got["epsilon_rdp"]


async def test_epsilon_pld_beyond_the_work_bound_is_null(client, monkeypatch):
    monkeypatch.setattr(accounting, "PLD_MAX_FFT_POINTS", 1000)  # any real composition is wider
    body = {"sample_rate": 250 / 60000, "noise_multiplier": 1.3, "steps": 720, "delta": 1e-5}
    got = (await client.post("/v1/accountant/epsilon", json=body)).json()
    assert got["epsilon_pld"] is None and got["epsilon_rdp"] == got["epsilon"] > 0


async def test_noise_multiplier_never_overshoots(client):
    body = {"target_epsilon": 3.0, "delta": 1e-5, "sample_rate": 0.004, "steps": 2500}
    response = await client.post("/v1/accountant/noise-multiplier", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    assert 0 < got["epsilon"] <= 3.0
    check = dp_core.compute_epsilon(
        sample_rate=0.004, noise_multiplier=got["noise_multiplier"], steps=2500, delta=1e-5
    )
    assert check.epsilon <= 3.0


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (
            "/v1/accountant/epsilon",
            {"sample_rate": 2.0, "noise_multiplier": 1.0, "steps": 1, "delta": 1e-5},
            "invalid_input",
        ),
        (
            "/v1/accountant/epsilon",
            {
                "sample_rate": 0.1,
                "noise_multiplier": 1.0,
                "steps": 1,
                "delta": 1e-5,
                "schedule": "nope",
            },
            "invalid_input",
        ),
        (
            "/v1/accountant/epsilon",
            {
                "sample_rate": 0.1,
                "noise_multiplier": 1.0,
                "steps": 10,
                "delta": 1e-5,
                "schedule": "geometric",
                "decay_rate": 1.5,
            },
            "invalid_input",
        ),
        (
            "/v1/accountant/noise-multiplier",
            {"target_epsilon": -1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10},
            "invalid_input",
        ),
        (
            "/v1/accountant/noise-multiplier",
            {"delta": 1e-5, "sample_rate": 0.1, "steps": 10},
            "invalid_input",
        ),
    ],
)
async def test_bad_accountant_input(client, database_url, path, body, code):
    before = snapshot(database_url)
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert snapshot(database_url) == before


async def test_a_tiny_sigma_gets_rdp_and_no_pld_instead_of_a_huge_grid(client):
    """Schemathesis found it: sigma 1e-3 spreads one step's losses over ~6e9 grid points."""
    body = {"steps": 2, "noise_multiplier": 0.001, "sample_rate": 0.001, "delta": 5e-324}
    response = await client.post("/v1/accountant/epsilon", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["epsilon_pld"] is None and response.json()["epsilon_rdp"] > 1e5
