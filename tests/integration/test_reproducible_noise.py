"""A run registered with reproducible noise is recorded, stated and marked as such (issue 20).

Through the API (RunCreate/RunRead), the statement (JSON and text), the dashboard's pages, and the
typed client and trainer gate that register runs.
"""

from __future__ import annotations

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, make_dataset, run_body

pytestmark = pytest.mark.anyio

NOTE = "does not hold against anyone who knows the seed"


async def test_the_flag_is_stored_read_back_and_defaults_to_false(client):
    await make_dataset(client)
    plain = (await client.post("/v1/runs", json=run_body(name="plain"))).json()
    seeded = await client.post("/v1/runs", json=run_body(name="seeded", reproducible_noise=True))
    assert seeded.status_code == 201, seeded.text
    assert plain["reproducible_noise"] is False and seeded.json()["reproducible_noise"] is True
    got = (await client.get(f"/v1/runs/{seeded.json()['id']}")).json()
    assert got["reproducible_noise"] is True
    listed = (await client.get("/v1/datasets/mnist/budget")).json()["runs"]
    assert {r["name"]: r.get("reproducible_noise") for r in listed} == {
        "plain": False,
        "seeded": True,
    }


async def test_a_non_boolean_flag_is_refused_and_nothing_is_written(client):
    await make_dataset(client)
    response = await client.post("/v1/runs", json=run_body(reproducible_noise="yes"))
    assert response.status_code == 422 and response.json()["code"] == "invalid_input"
    assert (await client.get("/v1/datasets/mnist/budget")).json()["runs"] == []


async def test_the_statement_says_the_guarantee_does_not_hold_against_seed_holders(client):
    await make_dataset(client)
    seeded = (await client.post("/v1/runs", json=run_body(reproducible_noise=True))).json()
    plain = (await client.post("/v1/runs", json=run_body(name="plain"))).json()
    got = (await client.get(f"/v1/runs/{seeded['id']}/statement")).json()
    assert got["reproducible_noise"] is True and NOTE in got["text"]
    other = (await client.get(f"/v1/runs/{plain['id']}/statement")).json()
    assert other["reproducible_noise"] is False and NOTE not in other["text"]


async def test_the_dashboard_marks_reproducible_runs(client, settings: Settings):
    await make_dataset(client)
    seeded = (await client.post("/v1/runs", json=run_body(reproducible_noise=True))).json()
    plain = (await client.post("/v1/runs", json=run_body(name="plain"))).json()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        origin = {"Origin": "http://dpledger.test"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dpledger.test", headers=origin
        ) as browser:
            await browser.post("/login", data={"token": ADMIN_TOKEN})
            dataset_page = (await browser.get("/dashboard/datasets/mnist")).text
            marked = dataset_page.split(f'data-run="{seeded["id"]}"')[1].split("</tr>")[0]
            unmarked = dataset_page.split(f'data-run="{plain["id"]}"')[1].split("</tr>")[0]
            assert 'data-field="reproducible_noise"' in marked
            assert 'data-field="reproducible_noise"' not in unmarked
            run_page = (await browser.get(f"/dashboard/runs/{seeded['id']}")).text
            assert 'data-field="reproducible_noise"' in run_page and NOTE in run_page
            plain_page = (await browser.get(f"/dashboard/runs/{plain['id']}")).text
            assert 'data-field="reproducible_noise"' not in plain_page
