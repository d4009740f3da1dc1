"""Schemathesis against ``openapi.yaml``: generated requests to a real server never get a 5xx.

The spec is the committed file (kept equal to the app by test_openapi_sync), the server a real
uvicorn process on SQLite and, with DATABASE_URL, on PostgreSQL (whose 32-bit integers and strict
types are where a missing bound would surface as a 500). A few resources exist beforehand so that
generated paths reach real rows as well as 404s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import ADMIN_TOKEN, empty_database_url
from tests.integration.server import Server

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
schema = schemathesis.openapi.from_path(SPEC)
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _seed(url: str) -> None:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30.0) as client:
        for name in ("mnist", "a", "0"):
            r = client.post(
                "/v1/datasets", json={"name": name, "target_epsilon": 3.0, "target_delta": 1e-5}
            )
            assert r.status_code == 201, r.text
        run = {"dataset": "mnist", "name": "r", "sample_rate": 0.01, "epochs": 2,
               "noise": {"noise_multiplier": 1.0}}  # fmt: skip
        for _ in range(2):
            assert client.post("/v1/runs", json=run).status_code == 201


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
    with empty_database_url(request.param, directory) as database_url:
        server = Server(database_url, directory / "server.log").start()
        try:
            _seed(server.url)
            yield server.url
        finally:
            server.stop()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
def test_no_generated_request_gets_a_server_error(case, server_url):
    response = case.call(base_url=server_url, headers=HEADERS, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
