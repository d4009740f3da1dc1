"""Structured logs: one JSON object per line on stderr, each carrying the current request id.

The request id lives in a context variable set by :class:`app.observability.RequestContextMiddleware`
for the duration of a request (sync route handlers run in worker threads, which inherit it), so
every record logged while serving a request names it, whichever logger wrote it.

Structured fields travel in ``extra={"fields": {...}}`` (see :func:`log_fields`); the JSON formatter
puts them at the top level of the line. Nothing here ever sees a token: callers log names and ids.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from app.settings import Settings

request_id_var: ContextVar[str | None] = ContextVar("dpledger_request_id", default=None)

_HANDLER_NAME = "dpledger"
_RESERVED = frozenset({"ts", "level", "logger", "message", "request_id"})


def log_fields(**fields: Any) -> dict[str, Any]:
    """Return the ``extra`` argument that attaches ``fields`` to a log record."""
    return {"fields": fields}


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """Return the structured fields of a record (empty when it has none)."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _jsonable(value: Any) -> Any:
    """Return ``value`` with non-finite floats as strings (JSON has no inf or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


#: Characters that could end a line or rewrite a terminal: C0 and C1 controls, DEL, and the
#: Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_text(value: str) -> str:
    """Return ``value`` with every control character written as an escape (``\\r``, ``\\x1b``).

    The text format writes user-controlled values (a request path, a run name, an exception's
    message) inside a line: escaped, a CR or LF in them can never forge a log line.
    """
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


class RequestIdFilter(logging.Filter):
    """Stamp every record with the request id of the request being served (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, message, request_id, its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in record_fields(record).items():
            line[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(_jsonable(line), default=str, allow_nan=False)


class TextFormatter(logging.Formatter):
    """A human-readable line: time, level, logger, request id, message, then key=value fields.

    Every value is escaped (:func:`escape_text`), so one record is always one line; a traceback
    follows on continuation lines that start with ``" | "``, never with a timestamp.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_id = None if request_id is None else escape_text(str(request_id))
        record.message = escape_text(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        text = escape_text(self.formatMessage(record))
        fields = record_fields(record)
        if fields:
            pairs = (f"{escape_text(str(k))}={_jsonable(v)!r}" for k, v in fields.items())
            text += " " + escape_text(" ".join(pairs))
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            text += "".join(f"\n | {escape_text(line)}" for line in record.exc_text.splitlines())
        return text


def make_handler(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Return the service's log handler (stderr unless ``stream`` is given)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    return handler


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records (uvicorn's included) through one handler on the root logger.

    Called by ``dpledger serve``; idempotent (a second call replaces the handler it installed).
    """
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = make_handler(settings, stream)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    return handler
