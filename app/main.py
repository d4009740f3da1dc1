"""The FastAPI app factory: routers, the one error handler, and the lifespan (engine, migrations)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.api.routes import accountant, dashboard, datasets, health, runs, tokens
from app.api.routes import metrics as metrics_routes
from app.db import create_db_engine, make_session_factory, upgrade_database
from app.errors import AppError
from app.observability import install_observability
from app.services.tokens import create_initial_token, register_bootstrap_token
from app.settings import Settings, get_settings

logger = logging.getLogger("dpledger")

_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _error(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=status, content=body)


async def handle_app_error(request: Request, exc: Exception) -> Response:
    """Turn a domain error into ``{code, message, ...}`` with its status (a dashboard page: HTML)."""
    assert isinstance(exc, AppError)
    page = dashboard.render_error_page(request, exc.status_code, exc.message)
    return page or _error(exc.status_code, exc.to_body())


async def handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
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
    return _error(422, {"code": "invalid_input", "message": message, "errors": errors})


async def handle_http_error(_request: Request, exc: Exception) -> JSONResponse:
    """Give framework errors (unknown route, wrong method) the same ``{code, message}`` shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return _error(exc.status_code, {"code": code, "message": str(exc.detail)})


def _prepare_database(app: FastAPI, settings: Settings) -> None:
    if settings.migrate_on_start:
        upgrade_database(settings)
    engine = create_db_engine(settings)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    with app.state.session_factory() as session:
        if settings.bootstrap_token is not None:
            register_bootstrap_token(session, settings.bootstrap_token.get_secret_value())
        initial = create_initial_token(session)
    if initial is not None:
        # Printed once, to stderr, so the operator can create the first real tokens.
        print(f"dpledger: created the first admin token (shown once): {initial}", file=sys.stderr)


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
    )
    app.state.settings = settings
    install_observability(app, lambda: app.state.session_factory())
    app.include_router(metrics_routes.router)
    for module in (health, datasets, runs, accountant, tokens, dashboard):
        app.include_router(module.router)
    app.mount(dashboard.STATIC_PATH, dashboard.static_files(), name=dashboard.STATIC_NAME)
    app.add_exception_handler(AppError, handle_app_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    return app
