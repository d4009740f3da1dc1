"""uvicorn's h11 protocol with a deadline for a request's headers (slow-header clients).

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but any byte received
cancels that timer, and a new connection has none: a client sending its headers one byte at a
time holds a connection (and a file descriptor) for as long as it likes. This protocol arms a
timer when a connection opens and after every response, and closes the connection if a complete
request head has not arrived when it fires. The body's deadline is
:class:`app.middleware.BodySizeLimitMiddleware`'s.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("dpledger")


class HeaderTimeoutH11Protocol(H11Protocol):
    """An :class:`H11Protocol` that closes connections whose request head arrives too slowly."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_if_head_received()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()
            self._disarm_if_head_received()  # a pipelined request may already be in

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _disarm_if_head_received(self) -> None:
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info(
                "closed a connection whose request headers took over %g s",
                self.header_timeout_s,
                extra={"fields": {"event": "header_timeout"}},
            )
            self.transport.close()


def protocol_with_header_timeout(header_timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """Return the protocol class for uvicorn's ``http`` option, with this deadline."""
    return type(
        "HeaderTimeoutH11Protocol",
        (HeaderTimeoutH11Protocol,),
        {"header_timeout_s": header_timeout_s},
    )
