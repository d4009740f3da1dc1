"""GET /metrics: access, per-dataset gauges read from the database, counters, latency histogram."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from app.db import make_session_factory
from app.main import create_app
from app.metrics import DatasetBudgetCollector
from app.services.metrics_access import read_dataset_gauges
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body

pytestmark = pytest.mark.anyio


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(http: httpx.AsyncClient) -> dict:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


async def token(http: httpx.AsyncClient, role: str, datasets: list[str] | None = None) -> str:
    body = {"name": f"{role}-metrics", "role": role, "datasets": datasets or []}
    response = await http.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def test_metrics_need_a_viewer_or_admin_token(client):
    await make_dataset(client)
    viewer = await token(client, "viewer")
    trainer = await token(client, "trainer", ["mnist"])
    anonymous = await client.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "unauthorized"
    bad = await client.get("/metrics", headers=auth("dpl_not_a_token"))
    assert bad.status_code == 401
    scoped = await client.get("/metrics", headers=auth(trainer))
    assert scoped.status_code == 403
    assert scoped.json()["code"] == "forbidden"
    assert (await client.get("/metrics", headers=auth(viewer))).status_code == 200
    assert (await client.get("/metrics")).status_code == 200  # admin


async def test_metrics_public_setting_opens_the_endpoint(settings):
    app = create_app(settings.model_copy(update={"metrics_public": True}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/metrics")
    assert response.status_code == 200
    assert "dpledger_database_up 1.0" in response.text


async def test_metrics_are_not_in_the_openapi_spec(client):
    spec = (await client.get("/openapi.json")).json()
    assert "/metrics" not in spec["paths"]


async def test_dataset_gauges_match_the_budget_endpoint(client):
    await make_dataset(client, "mnist", target_epsilon=3.0)
    await make_dataset(client, "cifar", target_epsilon=8.0)
    run = (await client.post("/v1/runs", json=run_body("mnist", epochs=4))).json()
    for epoch in range(2):
        await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
    await client.post("/v1/runs", json=run_body("mnist", name="big", epochs=500))  # refused
    samples = await scrape(client)
    for name in ("mnist", "cifar"):
        budget = (await client.get(f"/v1/datasets/{name}/budget")).json()
        for key in ("spent", "reserved", "remaining"):
            gauge = value(samples, f"dpledger_dataset_epsilon_{key}", dataset=name)
            assert gauge == pytest.approx(budget[f"epsilon_{key}"], rel=1e-12), (name, key)
        target = value(samples, "dpledger_dataset_epsilon_target", dataset=name)
        assert target == budget["target_epsilon"]
    assert value(samples, "dpledger_dataset_epsilon_spent", dataset="mnist") > 0
    assert value(samples, "dpledger_dataset_runs", dataset="mnist", status="running") == 1
    assert value(samples, "dpledger_dataset_runs", dataset="mnist", status="refused") == 1
    assert ("dpledger_dataset_runs", (("dataset", "cifar"), ("status", "running"))) not in samples
    assert value(samples, "dpledger_database_up") == 1


async def test_admissions_and_refusals_are_counted_by_code(client):
    await make_dataset(client, target_epsilon=3.0)
    assert (await client.post("/v1/runs", json=run_body(epochs=2))).status_code == 201
    assert (
        await client.post("/v1/runs", params={"dry_run": True}, json=run_body())
    ).status_code == 200
    too_big = await client.post("/v1/runs", json=run_body(name="big", epochs=500))
    assert too_big.json()["code"] == "budget_exceeded"
    unknown = await client.post("/v1/runs", json=run_body("nope"))
    assert unknown.json()["code"] == "not_found"
    undefined = await client.post(
        "/v1/runs", json=run_body(noise={"noise_multiplier": 1.0, "schedule": "nope"})
    )
    assert undefined.status_code == 422
    samples = await scrape(client)
    assert value(samples, "dpledger_admissions_total", dataset="mnist", dry_run="false") == 1
    assert value(samples, "dpledger_admissions_total", dataset="mnist", dry_run="true") == 1
    assert value(samples, "dpledger_refusals_total", code="budget_exceeded", dry_run="false") == 1
    assert value(samples, "dpledger_refusals_total", code="not_found", dry_run="false") == 1
    refused_codes = {
        dict(labels)["code"]
        for (name, labels), count in samples.items()
        if name == "dpledger_refusals_total" and count
    }
    assert refused_codes == {"budget_exceeded", "not_found", undefined.json()["code"]}


async def test_charges_are_counted(client):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body(epochs=3))).json()
    for epoch in (0, 1, 1):  # the retry of epoch 1 writes nothing and is not counted
        assert (
            await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
        ).status_code == 200
    samples = await scrape(client)
    assert value(samples, "dpledger_charges_total", dataset="mnist") == 2


async def test_latency_histogram_is_labelled_by_route_template(client):
    await make_dataset(client)
    run = (await client.post("/v1/runs", json=run_body())).json()
    await client.get(f"/v1/runs/{run['id']}")
    await client.get("/v1/runs/424242")
    await client.get("/no/such/path")
    samples = await scrape(client)
    count = "dpledger_http_request_duration_seconds_count"
    template = "/v1/runs/{run_id}"
    assert value(samples, count, method="GET", route=template, status="200") == 1
    assert value(samples, count, method="GET", route=template, status="404") == 1
    assert value(samples, count, method="POST", route="/v1/runs", status="201") == 1
    assert value(samples, count, method="GET", route="<unmatched>", status="404") == 1
    routes = {dict(labels)["route"] for (name, labels) in samples if name == count}
    assert f"/v1/runs/{run['id']}" not in routes
    assert not any("424242" in route or "no/such" in route for route in routes)
    total = "dpledger_http_request_duration_seconds_sum"
    assert value(samples, total, method="POST", route="/v1/runs", status="201") > 0


async def test_each_app_has_its_own_counters_but_shares_the_gauges(settings, client):
    """Two apps on one database act like two replicas: own counters, same gauges."""
    await make_dataset(client)
    assert (await client.post("/v1/runs", json=run_body())).status_code == 201
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers=auth(ADMIN_TOKEN)
        ) as replica:
            theirs = await scrape(replica)
    ours = await scrape(client)
    admitted = ("dpledger_admissions_total", (("dataset", "mnist"), ("dry_run", "false")))
    assert ours[admitted] == 1 and admitted not in theirs
    for key in ("spent", "reserved", "remaining"):
        gauge = ("dpledger_dataset_epsilon_" + key, (("dataset", "mnist"),))
        assert theirs[gauge] == ours[gauge]


async def test_scrape_reports_a_database_it_cannot_read(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")
    try:
        factory = make_session_factory(engine)
        collector = DatasetBudgetCollector(lambda: read_dataset_gauges(factory))
        families = {family.name: family for family in collector.collect()}
    finally:
        engine.dispose()
    assert [sample.value for sample in families["dpledger_database_up"].samples] == [0.0]
    assert set(families) == {"dpledger_database_up"}


def test_the_metrics_module_takes_plain_values():
    """Lower floors never import upper ones: app.metrics knows no service, model or session."""
    import ast
    from pathlib import Path

    import app.metrics

    tree = ast.parse(Path(app.metrics.__file__).read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not [name for name in imported if name.startswith(("app.", "sqlalchemy"))]
