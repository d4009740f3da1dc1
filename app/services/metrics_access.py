"""Who may scrape /metrics, and the per-dataset numbers it shows.

Access, in order: anyone when ``DPLEDGER_METRICS_PUBLIC`` is set; the static
``DPLEDGER_METRICS_TOKEN`` (compared in constant time, no database needed, so an outage can be
scraped as ``dpledger_database_up 0``); else a viewer or admin API token. The gauges name every
dataset and its budget, so a trainer token (scoped to some datasets) is refused: it must not learn
about the others.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.errors import PermissionDeniedError
from app.metrics import DatasetGauges
from app.schemas import Role
from app.services.budgets import summarize_budgets
from app.services.tokens import authenticate


def is_scrape_token(token: str | None, static_token: str | None) -> bool:
    """Whether ``token`` is the static scrape token (constant-time comparison)."""
    if token is None or static_token is None:
        return False
    return hmac.compare_digest(token.encode("utf-8"), static_token.encode("utf-8"))


def authorize_scrape(
    open_session: Callable[[], Session],
    *,
    public: bool,
    static_token: str | None,
    token: str | None,
) -> None:
    """Return when the caller may read /metrics; raise 401 or 403 otherwise.

    The database is opened only when neither the public flag nor the static token let it through.
    """
    if public or is_scrape_token(token, static_token):
        return
    with open_session() as session:
        principal = authenticate(session, token)
    if principal.role is Role.trainer:
        raise PermissionDeniedError(
            "/metrics needs a viewer or admin token (it shows every dataset)"
        )


def read_dataset_gauges(open_session: Callable[[], Session]) -> list[DatasetGauges]:
    """Return every dataset's gauges as plain values (raises when the database cannot be read)."""
    with open_session() as session:
        return [
            DatasetGauges(
                dataset=summary.dataset,
                target_epsilon=summary.target_epsilon,
                epsilon_spent=summary.epsilon_spent,
                epsilon_reserved=summary.epsilon_reserved,
                epsilon_remaining=summary.epsilon_remaining,
                runs=dict(summary.runs),
            )
            for summary in summarize_budgets(session)
        ]
