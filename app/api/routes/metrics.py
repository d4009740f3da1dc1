"""Prometheus metrics (``GET /metrics``); kept out of the OpenAPI spec, as it is not JSON."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.deps import SettingsDep
from app.metrics import AppMetrics
from app.services.metrics_access import authorize_scrape

router = APIRouter(tags=["metrics"])
_bearer = HTTPBearer(auto_error=False)


def require_scrape_access(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the scrape through when metrics are public, for the static scrape token, or for a
    viewer's or admin's API token (only this last case reads the database)."""

    def open_session() -> Session:
        session: Session = request.app.state.session_factory()
        return session

    static = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    authorize_scrape(
        open_session,
        public=settings.metrics_public,
        static_token=static,
        token=credentials.credentials if credentials else None,
    )


def get_app_metrics(request: Request) -> AppMetrics:
    """Return the metrics of the app serving the request."""
    metrics: AppMetrics = request.app.state.metrics
    return metrics


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_scrape_access)])
def get_metrics(
    metrics: Annotated[AppMetrics, Depends(get_app_metrics)],
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Return the metrics in the Prometheus text format (or OpenMetrics when asked for)."""
    body, content_type = metrics.render(accept)
    return Response(content=body, media_type=content_type)
