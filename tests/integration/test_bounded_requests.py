"""Bounded responses and abuse limits: idempotency keys bound to their body, refused runs kept in a
bounded form, the runs of /budget paginated, run creation rate-limited per token."""

from __future__ import annotations

import httpx
import pytest

from app.main import create_app
from app.services import runs as runs_service
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body, snapshot

pytestmark = pytest.mark.anyio


async def test_an_idempotency_key_reused_with_another_body_is_422(client, database_url):
    await make_dataset(client)
    key = {"Idempotency-Key": "k-1"}
    first = await client.post("/v1/runs", json=run_body(name="a"), headers=key)
    assert first.status_code == 201, first.text
    same = await client.post("/v1/runs", json=run_body(name="a"), headers=key)
    assert same.status_code == 201 and same.json()["id"] == first.json()["id"]
    before = snapshot(database_url)
    other = await client.post("/v1/runs", json=run_body(name="a", epochs=11), headers=key)
    assert other.status_code == 422, other.text
    assert other.json()["code"] == "idempotency_key_reused"
    assert str(first.json()["id"]) in other.json()["message"]
    assert snapshot(database_url) == before


async def test_refused_runs_are_kept_bounded_and_counted(client, database_url, monkeypatch):
    monkeypatch.setattr(runs_service, "REFUSED_RUNS_KEPT", 3)
    await make_dataset(client, target_epsilon=0.5)
    for i in range(7):
        response = await client.post("/v1/runs", json=run_body(name=f"r{i}", epochs=500))
        assert response.status_code == 409 and response.json()["code"] == "budget_exceeded"
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert [run["name"] for run in budget["runs"]] == ["r4", "r5", "r6"]
    assert budget["runs_refused_total"] == 7
    assert snapshot(database_url)["counts"]["runs"] == 3
    quiet = {"schedule": "constant", "noise_multiplier": 50.0, "decay_rate": 0.0}
    admitted = await client.post("/v1/runs", json=run_body(name="ok", epochs=1, noise=quiet))
    assert admitted.status_code == 201, admitted.text
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert budget["runs_refused_total"] == 7 and len(budget["runs"]) == 4


async def test_budget_runs_are_paginated_by_cursor(client):
    await make_dataset(client, target_epsilon=50.0)
    ids = []
    for i in range(5):
        response = await client.post("/v1/runs", json=run_body(name=f"p{i}", epochs=1))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    seen, after, pages = [], 0, 0
    while True:
        page = await client.get(
            "/v1/datasets/mnist/budget", params={"runs_limit": 2, "runs_after": after}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["runs"]) <= 2
        seen += [run["id"] for run in body["runs"]]
        pages += 1
        if body["runs_next_after"] is None:
            break
        after = body["runs_next_after"]
    assert seen == ids and pages == 3
    assert sum(kind["runs"] for kind in body["by_kind"]) == 5  # totals are over every run
    too_many = await client.get("/v1/datasets/mnist/budget", params={"runs_limit": 501})
    assert too_many.status_code == 422 and too_many.json()["code"] == "invalid_input"


async def test_run_creation_is_rate_limited_per_token(database_url):
    settings = Settings(
        database_url=database_url,
        bootstrap_token=ADMIN_TOKEN,
        run_rate_per_s=0.01,
        run_rate_burst=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dpledger.test", headers=auth(ADMIN_TOKEN)
        ) as http:
            await make_dataset(http, target_epsilon=50.0)
            tokens = []
            for name in ("t1", "t2"):
                created = await http.post(
                    "/v1/tokens", json={"name": name, "role": "trainer", "datasets": ["mnist"]}
                )
                tokens.append(auth(created.json()["token"]))
            for i in range(2):
                ok = await http.post("/v1/runs", json=run_body(name=f"a{i}"), headers=tokens[0])
                assert ok.status_code == 201, ok.text
            before = snapshot(database_url)
            limited = await http.post("/v1/runs", json=run_body(name="a2"), headers=tokens[0])
            assert limited.status_code == 429, limited.text
            assert limited.json()["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) >= 1
            assert snapshot(database_url) == before
            other = await http.post("/v1/runs", json=run_body(name="b0"), headers=tokens[1])
            assert other.status_code == 201, other.text  # another token has its own bucket
            for i in range(3):  # an admin could mint tokens at will: no limit binds it
                admin = await http.post("/v1/runs", json=run_body(name=f"adm{i}"))
                assert admin.status_code == 201, admin.text


async def test_the_ledger_is_paginated_by_cursor(client):
    await make_dataset(client, target_epsilon=50.0)
    for i in range(3):
        assert (await client.post("/v1/runs", json=run_body(name=f"l{i}"))).status_code == 201
    everything = (await client.get("/v1/datasets/mnist/ledger", params={"limit": 1000})).json()
    assert everything["next_after"] is None and everything["total"] == 3
    seen, after = [], 0
    while True:
        page = (
            await client.get("/v1/datasets/mnist/ledger", params={"limit": 2, "after": after})
        ).json()
        seen += [entry["id"] for entry in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == [entry["id"] for entry in everything["items"]]
