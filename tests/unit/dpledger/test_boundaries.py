"""One client per remote API: only dpledger.client speaks HTTP; dp_core never imports dpledger."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_client_imports_httpx():
    speakers = {
        str(path.relative_to(ROOT))
        for path in _files("dp_core", "app", "dpledger", "scripts")
        if {"httpx", "requests", "urllib3", "aiohttp"} & _imports(path)
    }
    # The ledger's one client, and `dpledger data get`'s one downloader of public data files.
    assert speakers == {"dpledger/client.py", "dpledger/data_fetch.py"}


def test_dp_core_never_imports_dpledger():
    for path in _files("dp_core"):
        assert "dpledger" not in _imports(path), path


def test_the_cli_imports_neither_the_client_nor_torch_until_used():
    code = (
        "import sys, dpledger.cli; "
        "assert 'torch' not in sys.modules and 'dpledger.gate' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
