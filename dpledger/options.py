"""Options shared by the commands that talk to the ledger service: its URL and the token.

``--service`` reads ``DPLEDGER_URL`` and ``--token`` reads ``DPLEDGER_TOKEN`` when not given. A URL
that comes from the environment alone does not turn a local command into a ledger one: the
command uses the ledger when it names something there (``--dataset``, ``statement --run``), so
``dpledger train --data digits`` stays a local run in a shell that exported ``DPLEDGER_URL``.
This module imports click only (the ledger's client when a probe runs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click
from click.core import ParameterSource

__all__ = ["SERVICE_ENV", "TOKEN_ENV", "announcing_sleep", "probe_ledger", "service_url"]

SERVICE_ENV = "DPLEDGER_URL"
TOKEN_ENV = "DPLEDGER_TOKEN"


def service_url(
    ctx: click.Context, service: str | None, *, names_ledger_object: bool
) -> str | None:
    """The ledger URL the command uses, or ``None`` for a local command.

    Args:
        ctx: The command's context (to tell ``--service`` from ``DPLEDGER_URL``).
        service: The value of ``--service`` (from the command line or the environment).
        names_ledger_object: Whether the command names a dataset or run of the ledger.
    """
    if service is None or not service.strip():
        return None
    from_environment = ctx.get_parameter_source("service") is ParameterSource.ENVIRONMENT
    return None if from_environment and not names_ledger_object else service


def announcing_sleep(
    base_url: str, *, say: Callable[[str], None] | None = None
) -> Callable[[float], None]:
    """A ``sleep`` for :class:`LedgerClient` that says on stderr why the command waits.

    The client retries a call that got no answer (or a 502/503/504) for up to a minute; the
    command line says so at each retry instead of looking stuck.
    """

    def write(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    speak = say or write

    def sleep(seconds: float) -> None:
        speak(f"dpledger: no answer from the ledger at {base_url}; retrying in {seconds:.1f} s")
        time.sleep(seconds)

    return sleep


def probe_ledger(base_url: str) -> None:
    """Check that the ledger answers (``GET /livez``), announcing retries; raise if it never does.

    ``dpledger train --service`` calls it before loading torch and the data, so an unreachable
    service is reported within seconds.
    """
    from dpledger.client import LedgerClient
    from dpledger.errors import ledger_at

    with ledger_at(base_url), LedgerClient(base_url, sleep=announcing_sleep(base_url)) as client:
        client.liveness()
