"""Write the service's OpenAPI spec to openapi.yaml (``make openapi``); a test checks it is current.

Usage: .venv/bin/python scripts/export_openapi.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from app.main import create_app
from app.settings import Settings

SPEC = Path(__file__).resolve().parent.parent / "openapi.yaml"


def current_spec() -> dict[str, Any]:
    """Return the app's spec (no database needed: the engine is made in the lifespan)."""
    return create_app(Settings(migrate_on_start=False)).openapi()


def render(spec: dict[str, Any]) -> str:
    """Return the spec as YAML, keys in the app's order."""
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100)


def main() -> int:
    """Write openapi.yaml, or with --check exit 1 when it differs from the app."""
    text = render(current_spec())
    if "--check" in sys.argv[1:]:
        if SPEC.read_text() != text:
            print("openapi.yaml is out of date: run make openapi", file=sys.stderr)
            return 1
        return 0
    SPEC.write_text(text)
    print(f"wrote {SPEC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
