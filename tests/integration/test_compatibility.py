"""What may share one budget, and what a composite keeps of its parts (issue 19's cases).

Each case was wrong before: a tuning job dropped its base's group size K (charged as K = 1) and
its privacy unit, a DP-SGD run could be charged through the PATE batch route, a grid whose
every order starts dead was accepted, a Poisson tuning job with mu < 1 or a huge quantized
federated model answered 500, and fixed-size (replace-one) rounds composed with add/remove
runs on one budget. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import numpy as np
import pytest

from dp_core.mechanisms import Grouped, SampledGaussianSchedule, Tuning, mechanism_from_dict
from dp_core.rdp.compose import compute_rdp
from dp_core.schedules import NoiseSchedule
from tests.integration.conftest import make_dataset, snapshot

pytestmark = pytest.mark.anyio

BASE = {"kind": "dp_sgd", "sample_rate": 0.01, "epochs": 2, "noise": {"noise_multiplier": 1.5}}


def tuning(base: dict[str, object], **fields: object) -> dict[str, object]:
    mechanism = {"kind": "tuning", "base": base, "candidates": 4,
                 "distribution": "negative_binomial", **fields}  # fmt: skip
    return {"dataset": "mnist", "name": "tune", "mechanism": mechanism}


def fedavg(sampling: str, **fields: object) -> dict[str, object]:
    mechanism: dict[str, object] = {"kind": "dp_fedavg", "users": 1000, "rounds": 3,
                                    "sampling": sampling, "noise_multiplier": 5.0, "clip": 1.0}  # fmt: skip
    if sampling == "fixed":
        mechanism["clients_per_round"] = 100
    else:
        mechanism["sample_rate"] = 0.1
    mechanism.update(fields)
    return {"dataset": "clinics", "name": f"fedavg-{sampling}", "mechanism": mechanism}


async def test_a_tuning_job_keeps_its_bases_group_size(client, database_url):
    await make_dataset(client, target_epsilon=3.0)
    grouped = {**BASE, "max_records_per_individual": 8}
    base_alone = await client.post(
        "/v1/runs?dry_run=true", json={"dataset": "mnist", "name": "b", "mechanism": grouped}
    )
    assert base_alone.status_code == 409, base_alone.text
    before = snapshot(database_url)
    job = await client.post("/v1/runs", json=tuning(grouped))
    # Before the fix: admitted and charged 1.81, exactly the K = 1 job's cost.
    assert job.status_code == 409, job.text
    assert job.json()["epsilon_projected"] >= base_alone.json()["epsilon_projected"]
    assert snapshot(database_url)["datasets"] == before["datasets"]


async def test_a_grouped_tuning_job_is_charged_the_tuning_bound_of_the_grouped_base(client):
    await make_dataset(client, target_epsilon=100)
    base = {**BASE, "noise": {"noise_multiplier": 4.0}, "max_records_per_individual": 4}
    job = await client.post("/v1/runs", json=tuning(base))
    assert job.status_code == 201, job.text
    charged = await client.post(f"/v1/runs/{job.json()['id']}/epochs", json={"epoch": 0})
    assert charged.status_code == 200, charged.text
    ledger = (await client.get("/v1/datasets/mnist/ledger")).json()["items"]
    entry = next(e for e in ledger if e["kind"] == "charge")
    stored = mechanism_from_dict(entry["mechanism"])
    schedule = NoiseSchedule(kind="constant", noise_multiplier=4.0)
    inner = SampledGaussianSchedule(sample_rate=0.01, schedule=schedule, steps=200)
    expected = Tuning(
        base=Grouped(records=4, inner=inner), distribution="negative_binomial", eta=1.0, gamma=0.5
    )
    assert stored == expected
    orders = np.asarray((await client.get("/v1/datasets/mnist")).json()["orders"])
    ungrouped = Tuning(base=inner, distribution="negative_binomial", eta=1.0, gamma=0.5)
    exact = compute_rdp(expected, orders)
    assert np.all(np.asarray(entry["rdp"], dtype=float) >= exact)
    assert np.all(exact > compute_rdp(ungrouped, orders))


async def test_a_tuning_job_protects_what_its_base_protects(client, database_url):
    await make_dataset(client)
    await make_dataset(client, name="clinics", privacy_unit="user")
    user_base = {**BASE, "privacy_unit": "user"}
    before = snapshot(database_url)
    wrong = await client.post("/v1/runs", json=tuning(user_base))
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["code"] == "privacy_unit_mismatch"
    assert wrong.json()["run_privacy_unit"] == "user"
    assert snapshot(database_url) == before
    right = await client.post("/v1/runs", json={**tuning(user_base), "dataset": "clinics"})
    assert right.status_code == 201, right.text
    example_on_users = await client.post("/v1/runs", json={**tuning(BASE), "dataset": "clinics"})
    assert example_on_users.json()["code"] == "privacy_unit_mismatch"


async def test_batches_are_pates_and_epochs_are_everyone_elses(client, database_url):
    await make_dataset(client)
    run = await client.post("/v1/runs", json={"dataset": "mnist", "name": "s", "mechanism": BASE})
    pate = {"kind": "pate", "aggregator": "gnmax", "noise_multiplier": 40.0, "queries": 10}
    job = await client.post("/v1/runs", json={"dataset": "mnist", "name": "p", "mechanism": pate})
    assert run.status_code == job.status_code == 201
    before = snapshot(database_url)
    as_batch = await client.post(f"/v1/runs/{run.json()['id']}/batches", json={"batch": 0})
    as_epoch = await client.post(f"/v1/runs/{job.json()['id']}/epochs", json={"epoch": 0})
    for response, route in ((as_batch, "epochs"), (as_epoch, "batches")):
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "unit_mismatch"
        assert route in response.json()["message"]
    assert snapshot(database_url) == before
    ok = await client.post(f"/v1/runs/{job.json()['id']}/batches", json={"batch": 0})
    assert ok.status_code == 200, ok.text


async def test_a_grid_whose_every_order_is_dead_is_refused_at_creation(client, database_url):
    orders = [1.0001 + i * 1.2e-6 for i in range(256)]
    before = snapshot(database_url)
    response = await client.post(
        "/v1/datasets",
        json={"name": "dead", "target_epsilon": 3, "target_delta": 1e-5, "orders": orders},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert snapshot(database_url) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("mnist", tuning(BASE, distribution="poisson", mu=1e-9)),
        ("clinics", fedavg("fixed", quantization_step=1.0, dimension=10**10)),
        ("clinics", fedavg("poisson", quantization_step=1e6, dimension=10**10)),
    ],
    ids=["tuning-mu-below-one", "fedavg-fixed-huge-model", "fedavg-poisson-huge-model"],
)
async def test_hopeless_mechanisms_are_4xx_never_500(client, database_url, path, body):
    await make_dataset(client)
    await make_dataset(client, name="clinics", privacy_unit="user")
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json={**body, "dataset": path})
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) >= {"code", "message"}
    # A refusal records the refused run (by design) but never changes a budget.
    assert snapshot(database_url)["datasets"] == before["datasets"]


async def test_replace_one_and_add_remove_never_share_a_budget(client, database_url):
    created = await make_dataset(client, name="clinics", privacy_unit="user", target_epsilon=50)
    assert created["neighbouring_relation"] is None
    fixed = await client.post("/v1/runs", json=fedavg("fixed"))
    assert fixed.status_code == 201, fixed.text
    dataset = (await client.get("/v1/datasets/clinics")).json()
    assert dataset["neighbouring_relation"] == "replace_one"
    before = snapshot(database_url)
    for body in (fedavg("poisson"), {"dataset": "clinics", "name": "u",
                                     "mechanism": {**BASE, "privacy_unit": "user"}}):  # fmt: skip
        for dry in ("?dry_run=true", ""):
            refused = await client.post(f"/v1/runs{dry}", json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "neighbouring_relation_mismatch"
            assert refused.json()["dataset_neighbouring_relation"] == "replace_one"
    assert snapshot(database_url) == before
    again = await client.post("/v1/runs", json={**fedavg("fixed"), "name": "second"})
    assert again.status_code == 201, again.text


async def test_a_refused_first_run_does_not_fix_the_relation(client):
    await make_dataset(client, name="clinics", privacy_unit="user", target_epsilon=0.5)
    refused = await client.post("/v1/runs", json=fedavg("fixed", noise_multiplier=0.5))
    assert refused.json()["code"] == "budget_exceeded"
    assert (await client.get("/v1/datasets/clinics")).json()["neighbouring_relation"] is None
    poisson = await client.post("/v1/runs", json=fedavg("poisson", noise_multiplier=20.0))
    assert poisson.status_code == 201, poisson.text
    relation = (await client.get("/v1/datasets/clinics")).json()["neighbouring_relation"]
    assert relation == "add_remove"


async def test_a_refusal_names_the_runs_own_unit(client):
    await make_dataset(client, name="clinics", privacy_unit="user", target_epsilon=2)
    body = fedavg("poisson", rounds=400, noise_multiplier=2.0)
    refused = await client.post("/v1/runs?dry_run=true", json=body)
    assert refused.status_code == 409, refused.text
    message = refused.json()["message"]
    fits = refused.json()["epochs_that_fit"]
    assert fits and f"{fits} rounds would fit" in message
    assert "epoch" not in message
