"""Pure-ASGI guards that run before routing, parsing and authentication.

* :class:`BodySizeLimitMiddleware` reads at most ``max_bytes`` of a request body (refusing a larger
  ``Content-Length`` at once, and counting streamed chunks otherwise), then replays the buffered
  body to the app: nothing ever parses or holds more than the limit. 413 ``payload_too_large``.
  The whole body must arrive within ``body_timeout_s`` (a slow client holds no worker longer):
  408 ``request_timeout``. The headers' own deadline is :mod:`app.http_protocol`'s.
* :class:`SafeUrlMiddleware` refuses a path or query string holding NUL, control or bidi
  characters (see :mod:`app.text`) with 422 ``invalid_input``, for every route alike.
* :class:`ErrorBoundaryMiddleware` turns an exception nothing else handled into the app's JSON
  500 *without re-raising* (Starlette's ServerErrorMiddleware re-raises, and uvicorn then closes
  the keep-alive connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.text import describe_unsafe, find_unsafe

ErrorRenderer = Callable[[Scope, Exception], Awaitable[Response]]


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """Return the ``{code, message}`` body every error has."""
    return JSONResponse(status_code=status, content={"code": code, "message": message})


def _too_large(max_bytes: int) -> Response:
    return error_response(
        413, "payload_too_large", f"the request body is larger than {max_bytes} bytes"
    )


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (413) or slower than ``body_timeout_s`` (408)
    before anything reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            if not declared.isdigit():
                await error_response(400, "bad_request", "invalid Content-Length")(
                    scope, receive, send
                )
                return
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            response = error_response(408, "request_timeout", message)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        if body is None:
            return  # the client left before sending its body: nobody to answer
        if isinstance(body, Response):
            await body(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | Response | None:
        """Return the whole body, a 413 to send, or None when the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return _too_large(self.max_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then whatever comes next (a disconnect)

    return replay


class SafeUrlMiddleware:
    """Refuse control, NUL and bidi characters in the path or query string (422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("query_string", b"").decode("utf-8", "replace")
            query = unquote(raw.replace("+", " "))
            for where, text in (("path", str(scope.get("path", ""))), ("query string", query)):
                char = find_unsafe(text)
                if char is not None:
                    message = f"the {where} holds a refused character ({describe_unsafe(char)})"
                    await error_response(422, "invalid_input", message)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class ErrorBoundaryMiddleware:
    """Answer any unhandled exception with ``render`` (a JSON 500) and keep the connection."""

    def __init__(self, app: ASGIApp, render: ErrorRenderer) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as error:
            if started:
                raise  # half a response is out: nothing better than closing is possible
            response = await self.render(scope, error)
            await response(scope, receive, send)
