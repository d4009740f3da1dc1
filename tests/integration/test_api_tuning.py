"""The `tuning` mechanism kind: one job, one unit, costed by Papernot & Steinke's bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dp_core.mechanisms import SampledGaussianSchedule, Tuning
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from tests.integration.conftest import assert_charged, make_dataset, snapshot

pytestmark = pytest.mark.anyio

BASE = {"kind": "dp_sgd", "sample_rate": 0.01, "epochs": 2,
        "noise": {"schedule": "constant", "noise_multiplier": 1.5}}  # fmt: skip


def tuning(**fields):
    mechanism = {"kind": "tuning", "base": BASE, "candidates": 4,
                 "distribution": "negative_binomial", "eta": 1.0, "gamma": 0.2, **fields}  # fmt: skip
    return {"dataset": "mnist", "name": "tune", "mechanism": mechanism}


def closed_form_rdp(orders, *, sigma, q, steps, eta, gamma):
    """Papernot & Steinke Thm. 2 with the base's RDP computed by dp_core (lambda_hat on a grid)."""
    base = SampledGaussianSchedule(
        sample_rate=q, schedule=NoiseSchedule(kind="constant", noise_multiplier=sigma), steps=steps
    )
    grid = np.array([1.0 + x / 4 for x in range(1, 400)])
    curve = compute_rdp(base, grid)
    penalty = min(
        (1 + eta) * math.log(1 / gamma),
        float(np.min((1 + eta) * (1 - 1 / grid) * curve + (1 + eta) * math.log(1 / gamma) / grid)),
    )
    expected_runs = eta * (1 - gamma) / (gamma * (1 - gamma**eta))
    a = np.asarray(orders)
    return compute_rdp(base, a) + penalty + math.log(expected_runs) / (a - 1)


async def test_a_tuning_job_reserves_its_bound_and_is_charged_as_one_unit(client):
    dataset = await make_dataset(client, target_epsilon=8.0)
    response = await client.post("/v1/runs", json=tuning())
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["kind"], job["epochs"], job["status"]) == ("tuning", 1, "admitted")
    assert job["mechanism"]["base"]["steps_per_epoch"] == 100
    charged = await client.post(f"/v1/runs/{job['id']}/epochs", json={"epoch": 0})
    assert charged.status_code == 200, charged.text
    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    charge = next(e for e in ledger if e["kind"] == "charge")
    assert charge["mechanism"]["mechanism"]["type"] == "tuning"
    exact = compute_rdp(
        Tuning(
            base=SampledGaussianSchedule(
                sample_rate=0.01,
                schedule=NoiseSchedule(kind="constant", noise_multiplier=1.5),
                steps=200,
            ),
            distribution="negative_binomial", eta=1.0, gamma=0.2,
        ),
        np.asarray(dataset["orders"]),
    )  # fmt: skip
    assert_charged(charge["rdp"], exact)
    # dp_core's bound is the theorem's closed form (the finer lambda_hat grid only tightens).
    closed = closed_form_rdp(dataset["orders"], sigma=1.5, q=0.01, steps=200, eta=1.0, gamma=0.2)
    np.testing.assert_allclose(exact, closed, rtol=2e-2)
    assert np.all(np.asarray(charge["rdp"]) >= closed * (1 - 2e-2))
    assert (await client.get(f"/v1/runs/{job['id']}")).json()["epsilon_run"] > 0


async def test_a_tuning_job_that_does_not_fit_is_refused_and_writes_nothing(client, database_url):
    await make_dataset(client, target_epsilon=1.0)
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json=tuning())
    assert response.status_code == 409 and response.json()["code"] == "budget_exceeded"
    after = snapshot(database_url)
    assert after["datasets"] == before["datasets"]  # nothing reserved or charged


async def test_a_poisson_tuning_job_and_bad_parameters(client):
    await make_dataset(client, target_epsilon=8.0)
    poisson = await client.post("/v1/runs", json=tuning(distribution="poisson", mu=3.0))
    assert poisson.status_code == 201, poisson.text
    for bad in ({"gamma": 1.0}, {"eta": -1.0}, {"distribution": "uniform"}, {"candidates": 0}):
        response = await client.post("/v1/runs", json=tuning(**bad))
        assert response.status_code == 422 and response.json()["code"] == "invalid_input"
