"""Ledger service throughput: epoch charges vs a no-op endpoint of the same server, same run.

Starts ``dpledger serve`` (one uvicorn worker) on PostgreSQL in a fresh schema, admits one run per
client, then for ``--seconds`` each of ``--clients`` concurrent clients charges its run's epochs
one after another (every charge: auth lookup, dataset row lock, ledger insert, commit). Then the
same clients call ``GET /livez`` (no database) for as long. Prints requests/s and p50/p99 latency
of both and their ratio. Client and server share the machine's cores.

Usage: DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/dpledger_test \\
       .venv/bin/python bench/service.py [--clients 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.server import Server  # noqa: E402

TOKEN = "dpl_test_admin_token"  # the token tests.integration.server registers at start


async def _load(http: httpx.AsyncClient, requests: list[tuple[str, dict | None]], seconds: float):
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(path_and_bodies):
        for method_path, body in path_and_bodies:
            if time.perf_counter() > deadline:
                return
            start = time.perf_counter()
            response = await (
                http.post(method_path, json=body) if body is not None else http.get(method_path)
            )
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text

    start = time.perf_counter()
    await asyncio.gather(*(worker(r) for r in requests))
    return len(latencies) / (time.perf_counter() - start), np.array(latencies)


def _report(label: str, rate: float, lat: np.ndarray) -> None:
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    print(f"{label:22s} {rate:9.1f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   n={lat.size}")


async def bench(base_url: str, clients: int, seconds: float) -> None:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60
    ) as http:
        body = {"name": "bench", "target_epsilon": 1000.0, "target_delta": 1e-5}
        assert (await http.post("/v1/datasets", json=body)).status_code == 201
        run_ids = []
        for i in range(clients):
            run = {
                "dataset": "bench",
                "name": f"client-{i}",
                "sample_rate": 0.01,
                "epochs": 10_000,
                "noise": {"noise_multiplier": 50.0},
            }
            response = await http.post("/v1/runs", json=run)
            assert response.status_code == 201, response.text
            run_ids.append(response.json()["id"])
        noop = [[("/livez", None)] * 10**7 for _ in range(clients)]
        await _load(http, [[("/livez", None)] * 20 for _ in range(clients)], 2.0)  # warm up
        charges = [[(f"/v1/runs/{r}/epochs", {"epoch": e}) for e in range(10_000)] for r in run_ids]
        charge_rate, charge_lat = await _load(http, charges, seconds)
        noop_rate, noop_lat = await _load(http, noop, seconds)
    print(f"{clients} concurrent clients, {seconds:g} s each, one uvicorn worker, PostgreSQL")
    _report("POST /v1/runs/{id}/epochs", charge_rate, charge_lat)
    _report("GET /livez (no-op)", noop_rate, noop_lat)
    print(f"charge throughput / no-op throughput = {charge_rate / noop_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgresql"):
        sys.exit("set DATABASE_URL=postgresql+psycopg://... (the bench measures PostgreSQL)")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conninfo = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    server = Server(
        url.render_as_string(hide_password=False), Path(tempfile.mkdtemp()) / "server.log"
    )
    try:
        server.start()
        asyncio.run(bench(server.url, args.clients, args.seconds))
    finally:
        server.stop()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
