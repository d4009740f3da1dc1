"""Datasets over the API (in-process ASGI transport), on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest

from app.services.accounting import DEFAULT_FILTER_ORDERS
from tests.integration.conftest import make_dataset, snapshot

pytestmark = pytest.mark.anyio


async def test_create_get_list(client):
    created = await make_dataset(client, "mnist", description="digits")
    assert created["orders"] == list(DEFAULT_FILTER_ORDERS)
    assert math.isclose(sum(created["weights"]), 1.0, rel_tol=1e-12)
    assert sum(created["weights"]) <= 1.0
    fetched = (await client.get("/v1/datasets/mnist")).json()
    assert fetched == created
    await make_dataset(client, "cifar")
    listing = (await client.get("/v1/datasets", params={"limit": 1})).json()
    assert listing["total"] == 2
    assert [d["name"] for d in listing["items"]] == ["cifar"]


async def test_custom_grid_is_sorted_and_normalised(client):
    created = await make_dataset(client, orders=[8.0, 2.0, 4.0], weights=[0.5, 0.25, 0.25])
    assert created["orders"] == [2.0, 4.0, 8.0]
    assert created["weights"] == pytest.approx([0.25, 0.25, 0.5], rel=1e-12)


async def test_duplicate_name_is_a_conflict(client, database_url):
    await make_dataset(client)
    before = snapshot(database_url)
    response = await client.post(
        "/v1/datasets", json={"name": "mnist", "target_epsilon": 1.0, "target_delta": 1e-6}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "dataset_exists"
    assert snapshot(database_url) == before


async def test_unknown_dataset_is_404(client, database_url):
    for path in ("/v1/datasets/nope", "/v1/datasets/nope/budget", "/v1/datasets/nope/ledger"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


async def test_empty_budget(client):
    await make_dataset(client)
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert budget["epsilon_spent"] == 0.0
    assert budget["epsilon_reserved"] == 0.0
    assert budget["epsilon_remaining"] == 3.0
    assert budget["epsilon_non_adaptive"] == 0.0
    assert budget["runs"] == []
    # Orders whose capacity is negative can hold no cost: they start outside the alive set.
    assert [row["alive"] for row in budget["orders"]] == [
        row["capacity"] >= 0 for row in budget["orders"]
    ]
    assert all(row["headroom"] == row["capacity"] for row in budget["orders"])
    assert all(
        row["share_used"] == (0.0 if row["capacity"] > 0 else None) for row in budget["orders"]
    )
