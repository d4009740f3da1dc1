"""The service image: non-root, no torch, migrations shipped where the settings look.

Where a Docker engine answers, the image is built and started, and must answer ``/healthz`` on
the port of its environment; where none does, that test skips and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_image_runs_as_non_root_without_torch():
    users = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "trainer" not in DOCKERFILE.split("pip install", 1)[1].split("\n", 1)[0]
    assert "torch" not in DOCKERFILE.replace("import torch", "").replace("no torch", "")
    assert "DPLEDGER_MIGRATIONS_DIR=/srv/dpledger/migrations" in DOCKERFILE
    assert "COPY migrations/ /srv/dpledger/migrations/" in DOCKERFILE


def test_the_build_context_leaves_out_the_virtualenv_caches_and_data():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/__pycache__", "data", "*.db", ".env"} <= set(ignored)


def test_the_healthcheck_asks_the_port_the_service_listens_on():
    (check,) = [line for line in DOCKERFILE.splitlines() if line.startswith("HEALTHCHECK")]
    assert "DPLEDGER_PORT" in check and ":8000/" not in check


def _docker_engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    answered = subprocess.run([docker, "info"], capture_output=True, timeout=30)
    return docker if answered.returncode == 0 else None


@pytest.mark.slow
def test_the_image_builds_starts_and_answers():
    docker = _docker_engine()
    if docker is None:
        pytest.skip("no Docker engine here (`docker info` failed or no docker): image not built")
    tag = f"dpledger-test:{uuid.uuid4().hex[:8]}"
    subprocess.run([docker, "build", "-q", "-t", tag, str(ROOT)], check=True, timeout=1200)
    token = "dpl_" + "t" * 40
    started = subprocess.run(
        [docker, "run", "-d", "--rm", "-p", "127.0.0.1::9000", "-e", "DPLEDGER_PORT=9000",
         "-e", f"DPLEDGER_BOOTSTRAP_TOKEN={token}", tag],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    container = started.stdout.strip()
    try:
        port = subprocess.run([docker, "port", container, "9000/tcp"], check=True,
                              capture_output=True, text=True).stdout.split(":")[-1].strip()  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        no_torch = subprocess.run([docker, "exec", container, "python", "-c", "import torch"],
                                  capture_output=True)  # fmt: skip
        assert no_torch.returncode != 0
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True)
