"""The FastAPI app factory: routers, the one error map, the request guards, and the lifespan.

Every error a client sees is JSON ``{"code", "message"}`` with its status, mapped here only:
domain errors (their own status), schema violations (422 ``invalid_input``), framework errors
(404, 405, ...), a database that cannot be reached or a lost connection (503
``database_unavailable`` with ``Retry-After``), and anything unexpected (500 ``internal_error``,
logged with the request id, no stack trace to the client). All of them are answered as ordinary
responses, so the keep-alive connection stays open.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from app import __version__
from app.api.routes import accountant, dashboard, datasets, health, runs, tokens
from app.api.routes import metrics as metrics_routes
from app.db import (
    SchemaOutOfDateError,
    create_db_engine,
    is_database_unavailable,
    make_session_factory,
    schema_problem,
    upgrade_database,
    with_database_retries,
)
from app.errors import AppError, DatabaseUnavailableError, InternalError, RateLimitedError
from app.logging_config import log_fields, request_id_var
from app.middleware import BodySizeLimitMiddleware, ErrorBoundaryMiddleware, SafeUrlMiddleware
from app.observability import install_observability
from app.services.metrics_access import read_dataset_gauges
from app.services.tokens import RateLimiter, create_initial_token, register_bootstrap_token
from app.settings import Settings, get_settings

logger = logging.getLogger("dpledger")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _error(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


def _retry_headers(request: Request, exc: AppError) -> dict[str, str] | None:
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(exc.details["retry_after_s"])}
    if exc.status_code != DatabaseUnavailableError.status_code:
        return None
    settings: Settings = request.app.state.settings
    return {"Retry-After": str(settings.retry_after_s)}


async def handle_app_error(request: Request, exc: Exception) -> Response:
    """Turn a domain error into ``{code, message, ...}`` with its status (a dashboard page: HTML)."""
    assert isinstance(exc, AppError)
    page = dashboard.render_error_page(request, exc.status_code, exc.message)
    headers = _retry_headers(request, exc)
    if page is not None:
        page.headers.update(headers or {})
        return page
    return _error(exc.status_code, exc.to_body(), headers)


#: Fields of a run's noise given at the top of ``POST /v1/runs``: where they belong.
_NOISE_FIELDS = ("noise_multiplier", "schedule", "decay_rate")


def _misplaced_hint(path: str, loc: list[str], kind: str) -> str:
    """A hint for a noise field put at the top level of a run (it belongs in ``noise``)."""
    if kind != "extra_forbidden" or not path.rstrip("/").endswith("/runs") or len(loc) != 2:
        return ""
    field = loc[1]
    if loc[0] != "body" or field not in _NOISE_FIELDS:
        return ""
    return (
        f' (the noise goes in an object: noise.{field}, e.g. "noise": {{"noise_multiplier": 1.0}})'
    )


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Turn a schema violation into 422 ``invalid_input`` (never echoing the input back)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else str(first["msg"])
    message += _misplaced_hint(request.url.path, list(first["loc"]), str(first.get("type", "")))
    return _error(422, {"code": "invalid_input", "message": message, "errors": errors})


async def handle_http_error(_request: Request, exc: Exception) -> JSONResponse:
    """Give framework errors (unknown route, wrong method) the same ``{code, message}`` shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return _error(exc.status_code, {"code": code, "message": str(exc.detail)}, exc.headers)


async def handle_database_error(request: Request, exc: Exception) -> Response:
    """A lost or unreachable database: 503 with Retry-After; any other database error: 500."""
    assert isinstance(exc, SQLAlchemyError)
    if is_database_unavailable(exc):
        logger.warning(
            "database unavailable: %s",
            type(getattr(exc, "orig", None) or exc).__name__,
            extra=log_fields(event="database_unavailable", path=request.url.path),
        )
        error: AppError = DatabaseUnavailableError(
            "the database is unavailable; retry later (see Retry-After)"
        )
        return await handle_app_error(request, error)
    return _internal_error(exc, request.url.path)


def _internal_error(exc: BaseException, path: str) -> JSONResponse:
    request_id = request_id_var.get()
    logger.error(
        "unhandled error",
        exc_info=exc,
        extra=log_fields(event="internal_error", path=path),
    )
    error = InternalError(f"internal error (request id {request_id})", request_id=request_id)
    return _error(error.status_code, error.to_body())


async def render_unhandled(scope: Scope, exc: Exception) -> Response:
    """The last resort of :class:`ErrorBoundaryMiddleware`: a logged JSON 500."""
    return _internal_error(exc, str(scope.get("path", "")))


def _hand_over_initial_token(token: str, settings: Settings) -> None:
    """Give the first admin token to the operator without writing it into the log stream.

    On an interactive terminal it is shown there; otherwise it is written to a file only its owner
    can read (mode 0600), and only the file's path is logged.
    """
    if sys.stderr.isatty():
        print(f"dpledger: created the first admin token (shown once): {token}", file=sys.stderr)
        return
    path = settings.token_file().expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file existed with other permissions
            os.write(fd, f"{token}\n".encode("ascii"))
        finally:
            os.close(fd)
    except OSError as error:
        raise RuntimeError(
            f"cannot write the first admin token to {path} ({error.strerror}); set"
            " DPLEDGER_INITIAL_TOKEN_FILE to a writable path, or DPLEDGER_BOOTSTRAP_TOKEN"
        ) from None
    logger.warning(
        "created the first admin token; it is in %s (mode 0600): read it, then delete the file",
        path,
        extra=log_fields(event="initial_token", path=str(path)),
    )


def _prepare_database(app: FastAPI, settings: Settings) -> None:
    """Migrate (or check the schema), then register the first tokens; retried while the database
    cannot be reached. A schema behind this code's migrations refuses to start."""
    if settings.migrate_on_start:
        with_database_retries(lambda: upgrade_database(settings), settings=settings)
    engine = create_db_engine(settings)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    try:
        with_database_retries(lambda: _check_and_bootstrap(app, settings), settings=settings)
    except BaseException:
        engine.dispose()  # a failed start leaves no connection open
        raise


def _check_and_bootstrap(app: FastAPI, settings: Settings) -> None:
    problem = schema_problem(app.state.engine, settings)
    if problem is not None:
        raise SchemaOutOfDateError(problem)
    with app.state.session_factory() as session:
        if settings.bootstrap_token is not None:
            register_bootstrap_token(session, settings.bootstrap_token.get_secret_value())
        create_initial_token(session, lambda token: _hand_over_initial_token(token, settings))


def _install_guards(app: FastAPI, settings: Settings) -> None:
    # Added first = innermost: the error boundary sits inside the request-id middleware (so its
    # 500s carry the id), and the size limit and URL check run before routing, parsing and auth.
    app.add_middleware(ErrorBoundaryMiddleware, render=render_unhandled)
    app.add_middleware(SafeUrlMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. The engine is made in the lifespan, so importing this module is cheap."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _prepare_database(app, settings)
        try:
            yield
        finally:
            app.state.engine.dispose()

    app = FastAPI(
        title="dpledger",
        version=__version__,
        summary="Privacy-budget ledger with admission control valid under adaptive composition.",
        lifespan=lifespan,
        docs_url=None,  # served by the dashboard router from vendored assets, under its CSP
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.run_limiter = RateLimiter(
        rate_per_s=settings.run_rate_per_s, burst=settings.run_rate_burst
    )
    _install_guards(app, settings)
    install_observability(app, lambda: read_dataset_gauges(app.state.session_factory))
    app.include_router(metrics_routes.router)
    for module in (health, datasets, runs, accountant, tokens, dashboard):
        app.include_router(module.router)
    app.mount(dashboard.STATIC_PATH, dashboard.static_files(), name=dashboard.STATIC_NAME)
    app.add_exception_handler(AppError, handle_app_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(SQLAlchemyError, handle_database_error)
    return app
