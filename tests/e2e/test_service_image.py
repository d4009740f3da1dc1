"""The service image: non-root, no torch, migrations shipped where the settings look."""

from __future__ import annotations

from pathlib import Path

DOCKERFILE = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def test_image_runs_as_non_root_without_torch():
    users = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "trainer" not in DOCKERFILE.split("pip install", 1)[1].split("\n", 1)[0]
    assert "torch" not in DOCKERFILE.replace("import torch", "").replace("no torch", "")
    assert "DPLEDGER_MIGRATIONS_DIR=/srv/dpledger/migrations" in DOCKERFILE
    assert "COPY migrations/ /srv/dpledger/migrations/" in DOCKERFILE
