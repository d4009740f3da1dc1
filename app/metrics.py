"""Prometheus metrics: one registry per app, per-process counters, per-dataset gauges from the DB.

Two kinds of numbers, and why they differ with several replicas:

* The per-dataset gauges (``dpledger_dataset_*``) are computed at scrape time from the database by
  :class:`DatasetBudgetCollector`, so every replica reports the same, current values.
* The counters and the latency histogram count what *this process* did since it started; sum them
  over replicas in PromQL.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (never the global one), so tests
can build many apps in one process. Services reach the current app's metrics through
:data:`current_metrics`, a context variable set for each request by the request middleware; outside
a request (the CLI) it is None and nothing is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.services.budgets import BudgetSummary, summarize_budgets

logger = logging.getLogger("dpledger.metrics")

SessionOpener = Callable[[], AbstractContextManager[Session]]

_BUDGET_GAUGES: tuple[tuple[str, str, Callable[[BudgetSummary], float]], ...] = (
    ("target", "The dataset's target epsilon.", lambda s: s.target_epsilon),
    (
        "spent",
        "Filter epsilon of the committed charges (+Inf: no order left).",
        lambda s: s.epsilon_spent,
    ),
    (
        "reserved",
        "Filter epsilon of charges plus open reservations (+Inf: no order left).",
        lambda s: s.epsilon_reserved,
    ),
    (
        "remaining",
        "Epsilon left for the next request (target minus reserved, >= 0).",
        lambda s: s.epsilon_remaining,
    ),
)


class DatasetBudgetCollector:
    """Yield every dataset's epsilon gauges and run counts, read from the database per scrape."""

    def __init__(self, open_session: SessionOpener) -> None:
        self._open_session = open_session

    def describe(self) -> Iterable[Metric]:
        # Declared so registering never touches the database (no collect() at registration).
        return [_database_up(1.0), *self._families([])]

    def collect(self) -> Iterable[Metric]:
        try:
            with self._open_session() as session:
                summaries = summarize_budgets(session)
        except SQLAlchemyError:
            logger.warning("metrics: could not read the datasets' budgets", exc_info=True)
            return [_database_up(0.0)]
        return [_database_up(1.0), *self._families(summaries)]

    @staticmethod
    def _families(summaries: list[BudgetSummary]) -> Iterator[Metric]:
        for suffix, documentation, value in _BUDGET_GAUGES:
            family = GaugeMetricFamily(
                f"dpledger_dataset_epsilon_{suffix}", documentation, labels=["dataset"]
            )
            for summary in summaries:
                family.add_metric([summary.dataset], value(summary))
            yield family
        runs = GaugeMetricFamily(
            "dpledger_dataset_runs", "Runs of the dataset by status.", labels=["dataset", "status"]
        )
        for summary in summaries:
            for status, count in sorted(summary.runs.items()):
                runs.add_metric([summary.dataset, status], float(count))
        yield runs


class AppMetrics:
    """One app's metrics: its registry, the per-process counters and the latency histogram."""

    def __init__(self, open_session: SessionOpener) -> None:
        self.registry = CollectorRegistry()
        self.admissions = Counter(
            "dpledger_admissions",
            "Run requests admitted by this process (dry_run: previews that would be admitted).",
            ["dataset", "dry_run"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "dpledger_refusals",
            "Run requests refused by this process, by error code (budget_exceeded, forbidden, ...).",
            ["code", "dry_run"],
            registry=self.registry,
        )
        self.charges = Counter(
            "dpledger_charges",
            "Epoch charges written by this process.",
            ["dataset"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "dpledger_http_request_duration_seconds",
            "Time to answer an HTTP request in this process, by route template.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(DatasetBudgetCollector(open_session))

    def count_admission(self, *, dataset: str, dry_run: bool) -> None:
        """Count one admitted run request."""
        self.admissions.labels(dataset=dataset, dry_run=_flag(dry_run)).inc()

    def count_refusal(self, *, code: str, dry_run: bool) -> None:
        """Count one refused run request."""
        self.refusals.labels(code=code, dry_run=_flag(dry_run)).inc()

    def count_charge(self, *, dataset: str) -> None:
        """Count one epoch charge."""
        self.charges.labels(dataset=dataset).inc()

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request's latency."""
        self.request_duration.labels(method=method, route=route, status=str(status)).observe(
            seconds
        )

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Return the exposition (the format the ``Accept`` header asks for) and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def _database_up(value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "dpledger_database_up", "Whether /metrics could read the database.", value
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


current_metrics: ContextVar[AppMetrics | None] = ContextVar("dpledger_metrics", default=None)
