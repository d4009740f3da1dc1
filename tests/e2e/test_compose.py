"""docker-compose.yml, checked statically (no Docker engine in CI): service + PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_postgres_16_with_a_healthcheck_and_a_volume():
    postgres = SERVICES["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"]
    env = postgres["environment"]
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(env)


def test_service_is_built_from_the_dockerfile_and_waits_for_healthy_postgres():
    for name in ("migrate", "dpledger"):
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["command"] == ["dpledger", "db", "upgrade"]
    service = SERVICES["dpledger"]
    assert service["command"] == ["dpledger", "serve"]
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "8000:8000" in service["ports"]


def test_service_environment_points_at_postgres_and_uses_real_settings():
    env = SERVICES["dpledger"]["environment"]
    url = env["DPLEDGER_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
    assert SERVICES["migrate"]["environment"]["DPLEDGER_DATABASE_URL"] == url
    assert env["DPLEDGER_BOOTSTRAP_TOKEN"].startswith("${DPLEDGER_BOOTSTRAP_TOKEN")
    assert env["DPLEDGER_MIGRATE_ON_START"] == "false"
    assert env["DPLEDGER_PORT"] == "8000" and env["DPLEDGER_HOST"] == "0.0.0.0"
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("DPLEDGER_") and key.removeprefix("DPLEDGER_").lower() in fields, key


def test_every_variable_has_a_default_or_a_message():
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"\$\{([A-Z_]+)([^}]*)\}", text):
        assert match.group(2).startswith((":-", ":?")), match.group(0)
