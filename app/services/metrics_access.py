"""Who may scrape /metrics: anyone when ``DPLEDGER_METRICS_PUBLIC`` is set, else viewers and admins.

The gauges name every dataset and its budget, so a trainer token (scoped to some datasets) is
refused: it must not learn about the others.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.errors import PermissionDeniedError
from app.schemas import Role
from app.services.tokens import authenticate


def authorize_scrape(session: Session, *, public: bool, token: str | None) -> None:
    """Return when the caller may read /metrics; raise 401 or 403 otherwise."""
    if public:
        return
    principal = authenticate(session, token)
    if principal.role is Role.trainer:
        raise PermissionDeniedError(
            "/metrics needs a viewer or admin token (it shows every dataset)"
        )
