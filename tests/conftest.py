"""Fixtures for every test: keep the per-user data directory inside the test's tmp_path.

The default database and the first admin token's file live in ``$XDG_DATA_HOME/dpledger``; no test
may write into the real home directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_home = tmp_path / "xdg-data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home
