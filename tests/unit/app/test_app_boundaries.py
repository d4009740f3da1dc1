"""The service never imports torch or dp_core.trainer (style guide, boundary 1)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "app"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_app_never_imports_torch_or_the_trainer():
    files = sorted(APP.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            assert not name.startswith(("torch", "dp_core.trainer")), f"{path}: {name}"


def test_importing_the_app_does_not_load_torch():
    code = (
        "import sys; from app.main import create_app; create_app(); "
        "import app.cli; print('torch' in sys.modules, 'dp_core.trainer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


#: What the budget authority may not import: it decides, the services load and save.
_LEDGER_FORBIDDEN = ("sqlalchemy", "fastapi", "starlette", "httpx", "app.models", "app.services",
                     "app.db", "app.api")  # fmt: skip


def test_the_ledger_is_pure():
    files = sorted((APP / "ledger").rglob("*.py"))
    assert len(files) >= 7
    for path in files:
        for name in _imports(path):
            assert not name.startswith(_LEDGER_FORBIDDEN), f"{path}: {name}"
