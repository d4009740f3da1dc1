"""User-level DP-SGD runs (per-user clipping, user-level sampling) belong on user-level datasets."""

from __future__ import annotations

import pytest

from tests.integration.conftest import make_dataset, snapshot

pytestmark = pytest.mark.anyio

USER_RUN = {
    "kind": "dp_sgd",
    "sample_rate": 0.05,
    "epochs": 2,
    "noise": {"noise_multiplier": 1.2},
    "max_grad_norm": 1.0,
    "privacy_unit": "user",
}


async def test_user_level_dp_sgd_is_admitted_on_a_user_dataset_and_charged_like_dp_sgd(client):
    await make_dataset(client, name="clinics", privacy_unit="user")
    created = await client.post(
        "/v1/runs", json={"dataset": "clinics", "name": "u", "mechanism": USER_RUN}
    )
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["mechanism"]["privacy_unit"] == "user"
    charged = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": 0})
    assert charged.status_code == 200
    # The same mechanism at the user level: the subsampled Gaussian with q the user sampling rate.
    example_level = dict(USER_RUN, privacy_unit="example")
    await make_dataset(client, name="rows")
    twin = await client.post(
        "/v1/runs", json={"dataset": "rows", "name": "e", "mechanism": example_level}
    )
    await client.post(f"/v1/runs/{twin.json()['id']}/epochs", json={"epoch": 0})
    ours = (await client.get(f"/v1/runs/{run['id']}")).json()["epsilon_run"]
    theirs = (await client.get(f"/v1/runs/{twin.json()['id']}")).json()["epsilon_run"]
    assert ours == theirs


async def test_units_refuse_each_others_dp_sgd_runs(client, database_url):
    await make_dataset(client, name="clinics", privacy_unit="user")
    await make_dataset(client, name="rows")
    before = snapshot(database_url)
    for dataset, unit in (("rows", "user"), ("clinics", "example")):
        body = {"dataset": dataset, "name": "x", "mechanism": dict(USER_RUN, privacy_unit=unit)}
        refused = await client.post("/v1/runs", json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "privacy_unit_mismatch"
    assert snapshot(database_url) == before
