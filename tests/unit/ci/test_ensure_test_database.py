"""`make test`'s first step: the PostgreSQL test database is created, or one line says why not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "ensure_test_database.py"


def _run(url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    return subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip


def test_without_database_url_it_does_nothing():
    done = _run(None)
    assert (done.returncode, done.stderr) == (0, "")


def test_an_unreachable_server_fails_with_one_line():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _run(f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/dpledger_x")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("make test: cannot create the test database") and "secret" not in line


@pytest.mark.postgres
def test_a_missing_database_is_created_once():
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgresql"):
        pytest.skip("PostgreSQL tests need DATABASE_URL=postgresql+psycopg://... (set by .ci/run)")
    name = f"dpledger_ensure_{uuid.uuid4().hex[:8]}"
    url = base.rsplit("/", 1)[0] + f"/{name}"
    try:
        first, second = _run(url), _run(url)
        assert first.returncode == second.returncode == 0
        assert f"created database '{name}'" in first.stderr
        assert f"database '{name}' exists" in second.stderr
    finally:
        from sqlalchemy import create_engine, text

        engine = create_engine(base.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        engine.dispose()
