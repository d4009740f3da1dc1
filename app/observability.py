"""Request ids, request logs and latencies, and the admission/charge log lines.

:class:`RequestContextMiddleware` (pure ASGI) gives every request an id (the caller's
``X-Request-ID`` when it is sane, else a new one), returns it in the ``X-Request-ID`` response header,
makes it visible to every log record written while the request is served, times the request into
the latency histogram (by route template, never the raw path) and logs one ``request`` line.

The services call :func:`observe_admission` (a decorator counting admissions and refusals by code),
:meth:`AdmissionLog.log_decision` at the filter's decision point, and :func:`log_charge`.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import AppError
from app.logging_config import log_fields, request_id_var
from app.metrics import AppMetrics, SessionOpener, current_metrics

logger = logging.getLogger("dpledger.requests")
audit_logger = logging.getLogger("dpledger.ledger")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:;=/+-]{1,128}")
# Probes that a load balancer or Prometheus sends every few seconds: logged at DEBUG only.
_QUIET_ROUTES = frozenset({"/healthz", "/livez", "/metrics"})
UNMATCHED_ROUTE = "<unmatched>"

P = ParamSpec("P")


class _HasDataset(Protocol):
    @property
    def dataset(self) -> str: ...


R = TypeVar("R", bound=_HasDataset)


def request_id_from(headers: Headers) -> str:
    """Return the caller's request id when it is short and plain, else a new random one."""
    incoming = headers.get(REQUEST_ID_HEADER)
    if incoming is not None and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """Return the matched route's path template (``/v1/runs/{run_id}``), not the raw path."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Request id, latency histogram and one log line per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: AppMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        id_token = request_id_var.set(request_id)
        metrics_token = current_metrics.set(self.metrics)
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra=log_fields(path=scope["path"]))
            raise
        finally:
            self._finish(scope, status, time.perf_counter() - start)
            current_metrics.reset(metrics_token)
            request_id_var.reset(id_token)

    def _finish(self, scope: Scope, status: int, seconds: float) -> None:
        route, method = route_template(scope), str(scope["method"])
        self.metrics.observe_request(method=method, route=route, status=status, seconds=seconds)
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
        logger.log(
            level,
            "%s %s %d",
            method,
            scope["path"],
            status,
            extra=log_fields(
                event="request",
                method=method,
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(seconds * 1000.0, 3),
            ),
        )


def install_observability(app: FastAPI, open_session: SessionOpener) -> AppMetrics:
    """Give ``app`` its metrics registry and the request middleware; return the metrics."""
    metrics = AppMetrics(open_session)
    app.state.metrics = metrics
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return metrics


def observe_admission(func: Callable[P, R]) -> Callable[P, R]:
    """Count the admissions and refusals (by error code) of an admission use-case."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        metrics = current_metrics.get()
        dry_run = bool(kwargs.get("dry_run", False))
        try:
            result = func(*args, **kwargs)
        except AppError as error:
            if metrics is not None:
                metrics.count_refusal(code=error.code, dry_run=dry_run)
            raise
        if metrics is not None:
            metrics.count_admission(dataset=result.dataset, dry_run=dry_run)
        return result

    return wrapper


@dataclass(frozen=True)
class FilterVerdict:
    """The facts of one filter decision, as plain values (no service types at this floor)."""

    admitted: bool
    order: float | None
    epsilon_projected: float
    epsilon_remaining: float
    target_epsilon: float


@dataclass(frozen=True)
class AdmissionLog:
    """What a decision line says about the request: run name, mechanism inputs, caller, dry run."""

    run_name: str
    inputs: dict[str, Any]
    actor: str
    dry_run: bool

    @classmethod
    def for_request(
        cls,
        *,
        run_name: str,
        mechanism: dict[str, Any],
        reservation: str,
        actor: str,
        dry_run: bool,
    ) -> AdmissionLog:
        """Return the log of a run request (``mechanism`` as stored, defaults filled in)."""
        inputs = {**mechanism, "reservation": reservation}
        return cls(run_name=run_name, inputs=inputs, actor=actor, dry_run=dry_run)

    def log_decision(self, *, dataset: str, verdict: FilterVerdict, run_id: int | None) -> None:
        """Log one decision of the filter with everything that led to it."""
        word = "admit" if verdict.admitted else "refuse"
        audit_logger.info(
            "admission %s: run %r on dataset %r%s",
            word,
            self.run_name,
            dataset,
            " (dry run)" if self.dry_run else "",
            extra=log_fields(
                event="admission",
                decision=word,
                dry_run=self.dry_run,
                dataset=dataset,
                run=self.run_name,
                run_id=run_id,
                actor=self.actor,
                **self.inputs,
                epsilon_projected=verdict.epsilon_projected,
                epsilon_remaining=verdict.epsilon_remaining,
                target_epsilon=verdict.target_epsilon,
                order=verdict.order,
            ),
        )


def log_approx_decision(
    *,
    dataset: str,
    run_name: str,
    release: dict[str, Any],
    admitted: bool,
    actor: str,
    sub_budget: dict[str, float],
) -> None:
    """Log the decision on a black-box release against the approximate-DP sub-budget."""
    verdict = "admit" if admitted else "refuse"
    audit_logger.info(
        "admission %s: release %r on dataset %r (approximate-DP sub-budget)",
        verdict,
        run_name,
        dataset,
        extra=log_fields(
            event="admission",
            decision=verdict,
            dry_run=False,
            dataset=dataset,
            run=run_name,
            actor=actor,
            **release,
            **sub_budget,
        ),
    )


def log_charge(*, dataset: str, run_id: int, epoch: int, ledger_entry_id: int, actor: str) -> None:
    """Log (and count) one new epoch charge."""
    audit_logger.info(
        "charge: run %d epoch %d on dataset %r",
        run_id,
        epoch,
        dataset,
        extra=log_fields(
            event="charge",
            dataset=dataset,
            run_id=run_id,
            epoch=epoch,
            ledger_entry_id=ledger_entry_id,
            actor=actor,
        ),
    )
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.count_charge(dataset=dataset)
