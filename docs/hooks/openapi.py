"""MkDocs hook: render the operations of ``openapi.yaml`` into the HTTP API reference page.

The page ``reference/http-api.md`` holds the marker ``<!-- openapi-operations -->``; at build time
it becomes one table per tag (method, path, summary, success and error statuses), read from the
committed ``openapi.yaml`` (which a test keeps equal to the service's schema).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MARKER = "<!-- openapi-operations -->"
SCHEMA = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def operations_markdown(schema: dict[str, Any]) -> str:
    """One Markdown table per tag of the schema's operations."""
    by_tag: dict[str, list[str]] = {}
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            tag = (operation.get("tags") or ["other"])[0]
            statuses = ", ".join(sorted(operation.get("responses", {})))
            row = (
                f"| `{method.upper()}` | `{path}` | {_cell(operation.get('summary', ''))} "
                f"| {statuses} |"
            )
            by_tag.setdefault(tag, []).append(row)
    info = schema.get("info", {})
    parts = [f"## Operations ({_cell(info.get('title', ''))} {_cell(info.get('version', ''))})"]
    for tag in sorted(by_tag):
        parts += [
            "",
            f"### {tag}",
            "",
            "| method | path | summary | statuses |",
            "|---|---|---|---|",
            *by_tag[tag],
        ]
    return "\n".join(parts) + "\n"


def on_page_markdown(markdown: str, **_kwargs: Any) -> str:
    """Replace the marker with the operations of ``openapi.yaml``."""
    if MARKER not in markdown:
        return markdown
    schema = yaml.safe_load(SCHEMA.read_text())
    return markdown.replace(MARKER, operations_markdown(schema))
