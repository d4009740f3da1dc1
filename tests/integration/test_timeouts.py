"""Slow clients: request headers and bodies have deadlines on a real server (uvicorn)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.integration.server import Server

DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("slow")
    env = {"DPLEDGER_HEADER_TIMEOUT_S": str(DEADLINE_S), "DPLEDGER_BODY_TIMEOUT_S": str(DEADLINE_S)}
    server = Server(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "server.log", env).start()
    yield server
    server.stop()


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10.0)
    return sock


def _read_all(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Read until the server closes (or ``limit_s`` passes); return the bytes and the time."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, float("inf")
    return data, time.monotonic() - start


def test_slow_headers_are_cut_off(slow_server):
    """A head sent one piece at a time, never finished: closed after the deadline."""
    sock = _connect(slow_server)
    with sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            time.sleep(DEADLINE_S / 4)
            sock.sendall(b"X-Slow: 1\r\n")  # each byte used to reset uvicorn's only timer
        data, elapsed = _read_all(sock, 10.0)
    assert data == b"" and elapsed < 8.0


def test_a_silent_connection_is_closed(slow_server):
    with _connect(slow_server) as sock:
        data, elapsed = _read_all(sock, 10.0)
    assert data == b"" and elapsed < 8.0


def test_a_kept_connection_gets_a_new_header_deadline(slow_server):
    with _connect(slow_server) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /livez HTTP/1.1\r\n")  # the next request's head, never finished
        data, elapsed = _read_all(sock, 10.0)
    assert data == b"" and elapsed < 8.0


def test_a_slow_body_gets_408_json(slow_server):
    head = (
        b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with _connect(slow_server) as sock:
        sock.sendall(head + b'{"name":')
        data, elapsed = _read_all(sock, 10.0)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b'"code":"request_timeout"' in data
    assert elapsed < 8.0
