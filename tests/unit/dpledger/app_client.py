"""The real service in-process, for the synchronous `LedgerClient`.

httpx's ``ASGITransport`` is async-only, so :class:`SyncASGITransport` runs it on an anyio
blocking portal (an event loop in a helper thread): the client under test is the ordinary sync
client, the app is ``create_app(Settings(...))`` with its lifespan and a real SQLite database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.main import create_app
from app.settings import Settings
from dpledger.client import LedgerClient, RetryPolicy

ADMIN_TOKEN = "dpl_test_admin_token_0123456789abcdef"
BASE_URL = "http://dpledger.test"


class SyncASGITransport(httpx.BaseTransport):
    """A sync httpx transport that hands every request to an ASGI app through a portal."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def call() -> httpx.Response:
            response = await self._asgi.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(
                response.status_code, headers=response.headers, content=content, request=request
            )

        return self._portal.call(call)


@dataclass
class LedgerApp:
    """A running app: make clients for it, and reach its database."""

    transport: SyncASGITransport
    database_url: str

    def client(self, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> LedgerClient:
        kwargs.setdefault("retry", RetryPolicy(max_attempts=1))
        return LedgerClient(BASE_URL, token=token, transport=self.transport, **kwargs)

    def trainer_token(self, *datasets: str) -> str:
        with self.client() as admin:
            return admin.create_token(name="trainer", role="trainer", datasets=list(datasets)).token


@contextmanager
def running_app(tmp_path: Path, **settings: Any) -> Iterator[LedgerApp]:
    """Run ``create_app`` on a new SQLite database in ``tmp_path`` (lifespan included)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    app = create_app(Settings(database_url=url, bootstrap_token=ADMIN_TOKEN, **settings))
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        yield LedgerApp(SyncASGITransport(app, portal), url)
