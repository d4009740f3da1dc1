"""Bad input: 422/404 with a code, and nothing written."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import make_dataset, run_body, snapshot

pytestmark = pytest.mark.anyio


def _noise(**kw):
    return {"schedule": "constant", "noise_multiplier": 1.0, "decay_rate": 0.0, **kw}


BAD_RUNS = [
    ("negative sample rate", run_body(sample_rate=-0.1), 422, "invalid_input"),
    ("sample rate above 1", run_body(sample_rate=1.5), 422, "invalid_input"),
    ("zero sample rate", run_body(sample_rate=0), 422, "invalid_input"),
    ("negative sigma", run_body(noise=_noise(noise_multiplier=-1.0)), 422, "invalid_input"),
    ("huge sigma", run_body(noise=_noise(noise_multiplier=1e300)), 422, "invalid_input"),
    ("string sigma", run_body(noise=_noise(noise_multiplier="1.0")), 422, "invalid_input"),
    ("float epochs", run_body(epochs=2.5), 422, "invalid_input"),
    ("huge epochs", run_body(epochs=10**12), 422, "invalid_input"),
    ("zero epochs", run_body(epochs=0), 422, "invalid_input"),
    ("too many steps", run_body(steps_per_epoch=10**7, epochs=100), 422, "invalid_input"),
    ("subnormal sample rate", run_body(sample_rate=5e-324), 422, "invalid_input"),
    ("unknown schedule", run_body(noise=_noise(schedule="wobbly")), 422, "invalid_input"),
    ("decay on constant", run_body(noise=_noise(decay_rate=0.1)), 422, "invalid_input"),
    (
        "decay to zero",
        run_body(noise=_noise(schedule="geometric", decay_rate=1.0)),
        422,
        "invalid_input",
    ),
    ("extra field", run_body(alphas=[2, 3]), 422, "invalid_input"),
    ("bad dataset slug", run_body(dataset="Not A Slug!"), 422, "invalid_input"),
    ("unknown dataset", run_body(dataset="nope"), 404, "not_found"),
]


@pytest.mark.parametrize(
    ("label", "body", "status", "code"), BAD_RUNS, ids=[b[0] for b in BAD_RUNS]
)
async def test_bad_run_requests(client, database_url, label, body, status, code):
    await make_dataset(client)
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"]
    assert snapshot(database_url) == before


@pytest.mark.parametrize("field", ["noise_multiplier", "schedule", "decay_rate"])
async def test_a_noise_field_at_the_top_of_a_run_says_where_it_belongs(client, database_url, field):
    await make_dataset(client)
    body = run_body()
    body[field] = body.pop("noise")[field]  # the flat shape of Opacus' and TF Privacy's calls
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 422 and response.json()["code"] == "invalid_input"
    assert response.json()["message"].startswith(f"body.{field}: Extra inputs are not permitted")
    assert f"noise.{field}" in response.json()["message"]
    assert snapshot(database_url) == before


async def test_other_extra_fields_get_no_noise_hint(client, database_url):
    await make_dataset(client)
    response = await client.post("/v1/runs", json=run_body(alphas=[2, 3]))
    assert response.status_code == 422 and "noise." not in response.json()["message"]


@pytest.mark.parametrize("field", ["dataset", "name", "sample_rate", "epochs", "noise"])
async def test_missing_run_fields(client, database_url, field):
    await make_dataset(client)
    body = run_body()
    del body[field]
    before = snapshot(database_url)
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert field in response.json()["message"]
    assert snapshot(database_url) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers(client, database_url, literal):
    await make_dataset(client)
    before = snapshot(database_url)
    text = json.dumps(run_body()).replace('"sample_rate": 0.004', f'"sample_rate": {literal}')
    response = await client.post(
        "/v1/runs", content=text, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    dataset = json.dumps({"name": "x", "target_epsilon": 1.0, "target_delta": 1e-5})
    response = await client.post(
        "/v1/datasets",
        content=dataset.replace("1.0", literal),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert snapshot(database_url) == before


BAD_DATASETS = [
    ("negative epsilon", {"target_epsilon": -1.0}, "invalid_input"),
    ("zero delta", {"target_delta": 0.0}, "invalid_input"),
    ("delta one", {"target_delta": 1.0}, "invalid_input"),
    ("order one", {"orders": [1.0, 2.0]}, "invalid_input"),
    ("duplicate orders", {"orders": [2.0, 2.0], "weights": [0.5, 0.5]}, "invalid_input"),
    ("weights length", {"orders": [2.0, 3.0], "weights": [1.0]}, "invalid_input"),
    ("weights sum", {"orders": [2.0, 3.0], "weights": [0.5, 0.6]}, "invalid_input"),
    ("zero weight", {"orders": [2.0, 3.0], "weights": [0.0, 1.0]}, "invalid_input"),
    ("bad name", {"name": "../etc"}, "invalid_input"),
    ("wrong type", {"target_epsilon": "three"}, "invalid_input"),
]


@pytest.mark.parametrize(("label", "patch", "code"), BAD_DATASETS, ids=[b[0] for b in BAD_DATASETS])
async def test_bad_dataset_requests(client, database_url, label, patch, code):
    before = snapshot(database_url)
    body = {"name": "mnist", "target_epsilon": 3.0, "target_delta": 1e-5, **patch}
    response = await client.post("/v1/datasets", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert snapshot(database_url) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/runs/1/epochs", {"epoch": -1}),
        ("/v1/runs/1/epochs", {"epoch": "zero"}),
        ("/v1/runs/1/epochs", {}),
        ("/v1/runs/99999999999/epochs", {"epoch": 0}),
        ("/v1/runs/abc/epochs", {"epoch": 0}),
    ],
)
async def test_bad_charges(client, database_url, path, body):
    await make_dataset(client)
    await client.post("/v1/runs", json=run_body())
    before = snapshot(database_url)
    response = await client.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert snapshot(database_url) == before


async def test_unknown_run_is_404(client, database_url):
    before = snapshot(database_url)
    for response in (
        await client.get("/v1/runs/12345"),
        await client.post("/v1/runs/12345/epochs", json={"epoch": 0}),
        await client.post("/v1/runs/12345/finish"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert snapshot(database_url) == before


async def test_malformed_json_and_unknown_route(client):
    response = await client.post(
        "/v1/datasets", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    response = await client.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
