"""Bearer tokens and roles."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, select

from app.auth import hash_token
from app.models import ApiToken
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body, snapshot

pytestmark = pytest.mark.anyio


async def _token(client, role, datasets=()):
    response = await client.post(
        "/v1/tokens", json={"name": f"{role}-token", "role": role, "datasets": list(datasets)}
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


async def test_missing_and_unknown_tokens_are_401(client):
    assert (await client.get("/healthz", headers={"Authorization": ""})).status_code == 200
    for headers in ({"Authorization": ""}, auth("dpl_wrong"), {"Authorization": "Basic abc"}):
        response = await client.get("/v1/datasets", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


async def test_roles(client, database_url):
    await make_dataset(client, "mnist")
    await make_dataset(client, "cifar")
    trainer = auth(await _token(client, "trainer", ["mnist"]))
    viewer = auth(await _token(client, "viewer"))
    before = snapshot(database_url)

    for headers in (trainer, viewer):
        response = await client.post(
            "/v1/datasets",
            headers=headers,
            json={"name": "x", "target_epsilon": 1.0, "target_delta": 1e-5},
        )
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
        assert (
            await client.post("/v1/tokens", headers=headers, json={"name": "n", "role": "admin"})
        ).status_code == 403
    assert (await client.post("/v1/runs", headers=viewer, json=run_body())).status_code == 403
    assert (
        await client.post("/v1/runs", headers=trainer, json=run_body("cifar"))
    ).status_code == 403
    assert (await client.get("/v1/datasets/cifar/budget", headers=trainer)).status_code == 403
    assert snapshot(database_url) == before

    run = await client.post("/v1/runs", headers=trainer, json=run_body("mnist"))
    assert run.status_code == 201
    run_id = run.json()["id"]
    assert (
        await client.post(f"/v1/runs/{run_id}/epochs", headers=viewer, json={"epoch": 0})
    ).status_code == 403
    assert (
        await client.post(f"/v1/runs/{run_id}/epochs", headers=trainer, json={"epoch": 0})
    ).status_code == 200
    assert (await client.get("/v1/datasets/mnist/budget", headers=viewer)).status_code == 200
    listing = (await client.get("/v1/datasets", headers=trainer)).json()
    assert [d["name"] for d in listing["items"]] == ["mnist"]
    ledger = (await client.get("/v1/datasets/mnist/ledger", headers=viewer)).json()
    assert {e["actor"] for e in ledger["items"]} == {"trainer:trainer-token"}


async def test_tokens_are_stored_hashed(client, database_url):
    token = await _token(client, "viewer")
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            hashes = set(conn.scalars(select(ApiToken.token_hash)))
    finally:
        engine.dispose()
    assert hash_token(token) in hashes and hash_token(ADMIN_TOKEN) in hashes
    assert token not in hashes and ADMIN_TOKEN not in hashes


def test_bootstrap_token_race_between_replicas_is_harmless(settings, monkeypatch):
    """Two replicas may both see no bootstrap token and insert it: the loser must not crash."""
    from sqlalchemy import func, select

    from app.db import create_db_engine, make_session_factory, upgrade_database
    from app.models import ApiToken
    from app.services import tokens

    upgrade_database(settings)
    engine = create_db_engine(settings)
    try:
        factory = make_session_factory(engine)
        with factory() as session:
            tokens.register_bootstrap_token(session, "dpl_same_secret")
        with factory() as session:
            # The second replica checked before the first one committed: it sees no row.
            monkeypatch.setattr(session, "scalar", lambda *args, **kwargs: None)
            tokens.register_bootstrap_token(session, "dpl_same_secret")
        with factory() as session:
            assert session.execute(select(func.count()).select_from(ApiToken)).scalar_one() == 1
    finally:
        engine.dispose()
