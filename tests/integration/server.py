"""A real dpledger server in a subprocess (``serve`` from app.cli, i.e. uvicorn), for black-box tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.conftest import ADMIN_TOKEN

ROOT = Path(__file__).resolve().parents[2]
_SERVE = "import typer; from app.cli import register; cli = typer.Typer(); register(cli); cli()"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """Start with :meth:`start`, stop gracefully with :meth:`stop` or brutally with :meth:`kill`."""

    def __init__(self, database_url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.log = log
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        env = {
            **os.environ,
            "DPLEDGER_DATABASE_URL": self.database_url,
            "DPLEDGER_BOOTSTRAP_TOKEN": ADMIN_TOKEN,
            **self.env,
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SERVE,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no shutdown, no flush, no rollback
        self.process.wait(timeout=30)
        self.process = None
