"""Startup: a schema behind the code's migrations refuses to start; an unreachable database is
waited for (with backoff), not a reason to exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db import SchemaOutOfDateError, upgrade_database
from app.main import create_app
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, _postgres_base_url, postgres_schema_url
from tests.integration.faults import TcpProxy, upstream_of, via_proxy
from tests.integration.server import ROOT, Server, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def postgres_url() -> Iterator[str]:
    base = _postgres_base_url()
    if base is None:
        pytest.skip("PostgreSQL tests need DATABASE_URL=postgresql+psycopg://... (set by .ci/run)")
    with postgres_schema_url(base) as url:
        yield url


def _one_behind(database_url: str) -> Settings:
    settings = Settings(database_url=database_url, migrate_on_start=False)
    upgrade_database(settings, "0006")
    return settings


async def test_the_app_refuses_a_schema_behind_head(database_url):
    settings = _one_behind(database_url)
    app = create_app(settings)
    with pytest.raises(SchemaOutOfDateError, match="revision 0006.*dpledger db upgrade"):
        async with app.router.lifespan_context(app):
            pass


def test_serve_exits_2_with_one_line_on_a_schema_behind_head(database_url):
    _one_behind(database_url)
    env = {
        "DPLEDGER_DATABASE_URL": database_url,
        "DPLEDGER_MIGRATE_ON_START": "false",
        "DPLEDGER_BOOTSTRAP_TOKEN": ADMIN_TOKEN,
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        # Through the real root command: its one mapping turns the refusal into exit 2.
        [sys.executable, "-m", "dpledger", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "revision 0006" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def _restore_when_retrying(proxy: TcpProxy, log: Path, stop: threading.Event) -> None:
    """Bring the database's port up once the server has logged a retry (or after 40 s)."""
    deadline = time.monotonic() + 40.0
    while not stop.is_set() and time.monotonic() < deadline:
        if log.exists() and "startup_retry" in log.read_text():
            break
        time.sleep(0.1)
    proxy.restore()


def test_a_server_waits_for_a_database_that_is_not_up_yet(postgres_url, tmp_path):
    """The database's port refuses connections until the server retried: it then starts."""
    proxy = TcpProxy(upstream_of(postgres_url))
    proxy.port = free_port()  # nothing listens there yet
    log, stop = tmp_path / "server.log", threading.Event()
    restorer = threading.Thread(target=_restore_when_retrying, args=(proxy, log, stop))
    restorer.start()
    server = Server(via_proxy(postgres_url, proxy), log)
    try:
        server.start(timeout=90.0)
        assert httpx.get(f"{server.url}/healthz", timeout=5.0).status_code == 200
        assert "startup_retry" in log.read_text()
    finally:
        stop.set()
        restorer.join()
        server.stop()
        proxy.cut()
