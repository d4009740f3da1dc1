"""Ledger service speed: epoch charges vs a no-op endpoint of the same server, in the same run.

Starts ``dpledger serve`` (one uvicorn worker) on PostgreSQL in a fresh schema and measures, side
by side:

1. one client: epoch charges and ``GET /livez`` (no database), alternating, one at a time; goal:
   charge p50 <= 3x the no-op p50 (issue 10);
2. ``--clients`` concurrent clients, each charging its own run's epochs for ``--seconds``, then
   the same clients on ``/livez``; goal: charge throughput >= 0.5x the no-op throughput;
3. the worst requests the default limits allow (issues 11 and 21), each timed once: goal < 1 s
   of the server's CPU (read from /proc, so a loaded machine inflates only the wall time).

Every charge is one transaction: authenticate + lock + read the run in one statement, then the
ledger entry and the new budget state in one statement (a data-modifying CTE), then the commit. Client and server share the machine's cores. The load generator speaks raw
async httpx on purpose (many concurrent requests); applications use dpledger.client.

Usage: DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/dpledger_test \\
       .venv/bin/python bench/service.py [--clients 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
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

from tests.integration.conftest import ADMIN_TOKEN as TOKEN  # noqa: E402  (registered at start)
from tests.integration.server import Server  # noqa: E402


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


async def _sequential(http: httpx.AsyncClient, calls: list[tuple[str, dict | None]]) -> np.ndarray:
    latencies = []
    for path, body in calls:
        start = time.perf_counter()
        response = await (http.post(path, json=body) if body is not None else http.get(path))
        latencies.append(time.perf_counter() - start)
        assert response.status_code == 200, response.text
    return np.array(latencies)


async def _single_client(http: httpx.AsyncClient, run_id: int, count: int) -> None:
    """Charges and no-ops alternate, one at a time, so both see the same machine (a drift in
    load or in the database's state during the run affects both alike)."""
    await _sequential(http, [("/livez", None)] * 50)  # warm up
    charge_lat, noop_lat = [], []
    for epoch in range(count):
        charge_lat.append(
            await _sequential(http, [(f"/v1/runs/{run_id}/epochs", {"epoch": epoch})])
        )
        noop_lat.append(await _sequential(http, [("/livez", None)]))
    charge_p50, noop_p50 = np.median(charge_lat) * 1e3, np.median(noop_lat) * 1e3
    print(f"one client, {count} requests each, alternating")
    print(f"  charge p50 {charge_p50:.2f} ms, /livez p50 {noop_p50:.2f} ms")
    print(f"  charge p50 / no-op p50 = {charge_p50 / noop_p50:.2f}   (goal <= 3)")


WORST = {
    "PATE 1e8 queries, batches of 1": (
        "/v1/runs",
        {"dataset": "bench", "name": "pate", "mechanism": {"kind": "pate", "aggregator": "gnmax",
         "noise_multiplier": 1e4, "queries": 100_000_000, "batch_size": 1}},
    ),
    "decaying run at the noise-level limit": (
        "/v1/runs",
        {"dataset": "bench", "name": "decay", "sample_rate": 0.01, "steps_per_epoch": 10,
         "epochs": 1_200, "noise": {"schedule": "exponential", "noise_multiplier": 5.0,
                                     "decay_rate": 1e-7}},
    ),
    "epsilon, decaying, at the limit": (
        "/v1/accountant/epsilon",
        {"sample_rate": 0.01, "noise_multiplier": 1.0, "steps": 12_000, "delta": 1e-5,
         "schedule": "exponential", "decay_rate": 1e-6},
    ),
    "noise-multiplier, decaying, at the limit": (
        "/v1/accountant/noise-multiplier",
        {"target_epsilon": 5.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 6_000,
         "schedule": "exponential", "decay_rate": 1e-6},
    ),
    "max-steps, constant, huge noise": (
        "/v1/accountant/max-steps",
        {"target_epsilon": 1000.0, "delta": 1e-5, "sample_rate": 1e-6, "noise_multiplier": 1e6},
    ),
    "noise_multiplier 1e-300 (refused)": (
        "/v1/accountant/epsilon",
        {"sample_rate": 0.01, "noise_multiplier": 1e-300, "steps": 10, "delta": 1e-5},
    ),
}  # fmt: skip


#: The server's process id (set by main): the worst requests report the server's CPU time, which
#: a loaded machine does not inflate as it does wall time.
_SERVER_PID: list[int] = []


def _server_cpu_s() -> float:
    """CPU seconds (user + system) the server process has used so far (Linux /proc)."""
    if not _SERVER_PID:
        return math.nan
    fields = Path(f"/proc/{_SERVER_PID[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print_worst(label: str, status: int, took: float, cpu: float) -> None:
    print(
        f"  {label:42s} {status}  wall {took * 1e3:8.1f} ms  server CPU {cpu * 1e3:7.0f} ms"
        "   (goal < 1000 ms)"
    )


async def _timed_get(http: httpx.AsyncClient, label: str, path: str, **params: object) -> None:
    start, cpu = time.perf_counter(), _server_cpu_s()
    response = await http.get(path, params=params)
    _print_worst(label, response.status_code, time.perf_counter() - start, _server_cpu_s() - cpu)


async def _worst_reads(http: httpx.AsyncClient) -> None:
    """Issue 21: the statement of a cheap-to-admit 10^7-step run (23-30 s and 1 GB before), a
    user-level statement of a decaying run at the work limit, and /budget after a refusal flood."""
    sigma500 = {"schedule": "constant", "noise_multiplier": 500.0}
    big = {"dataset": "bench", "name": "big", "sample_rate": 0.5, "steps_per_epoch": 10_000_000,
           "epochs": 1, "noise": sigma500}  # fmt: skip
    decaying = {"dataset": "bench", "name": "k16", "sample_rate": 0.01, "steps_per_epoch": 100,
                "epochs": 7, "noise": {"schedule": "exponential", "noise_multiplier": 2.0,
                                        "decay_rate": 1e-6}}  # fmt: skip
    ids = []
    for body in (big, decaying):
        run = (await http.post("/v1/runs", json=body)).json()
        for epoch in range(body["epochs"]):
            await http.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
        ids.append(run["id"])
    await _timed_get(http, "statement, q 0.5 sigma 500, 1e7 steps", f"/v1/runs/{ids[0]}/statement")
    await _timed_get(
        http, "statement, decaying, K=16, at the limit", f"/v1/runs/{ids[1]}/statement",
        records_per_user=16,
    )  # fmt: skip
    refused = {**big, "name": "refused", "noise": {"noise_multiplier": 0.5}, "epochs": 1}
    for _ in range(300):
        await http.post("/v1/runs", json=refused)
    start, cpu = time.perf_counter(), _server_cpu_s()
    response = await http.get("/v1/datasets/bench/budget")
    took, cpu = time.perf_counter() - start, _server_cpu_s() - cpu
    _print_worst("/budget after 300 refusals", response.status_code, took, cpu)
    print(
        f"  /budget size {len(response.content)} bytes, runs listed {len(response.json()['runs'])}"
    )


async def _worst_requests(http: httpx.AsyncClient) -> None:
    print("worst requests the default limits allow (one each)")
    for label, (path, body) in WORST.items():
        start, cpu = time.perf_counter(), _server_cpu_s()
        response = await http.post(path, json=body)
        took, cpu = time.perf_counter() - start, _server_cpu_s() - cpu
        _print_worst(label, response.status_code, took, cpu)
    await _worst_reads(http)


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
        await _single_client(http, run_ids[0], 1000)
        noop = [[("/livez", None)] * 10**7 for _ in range(clients)]
        await _load(http, [[("/livez", None)] * 20 for _ in range(clients)], 2.0)  # warm up
        charges = [
            [(f"/v1/runs/{r}/epochs", {"epoch": e}) for e in range(1000 if i == 0 else 0, 10_000)]
            for i, r in enumerate(run_ids)
        ]
        charge_rate, charge_lat = await _load(http, charges, seconds)
        noop_rate, noop_lat = await _load(http, noop, seconds)
        print(f"{clients} concurrent clients, {seconds:g} s each, one uvicorn worker, PostgreSQL")
        _report("POST /v1/runs/{id}/epochs", charge_rate, charge_lat)
        _report("GET /livez (no-op)", noop_rate, noop_lat)
        ratio = charge_rate / noop_rate
        print(f"charge throughput / no-op throughput = {ratio:.2f}   (goal >= 0.5)")
        await _worst_requests(http)


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
        assert server.process is not None
        _SERVER_PID.append(server.process.pid)
        asyncio.run(bench(server.url, args.clients, args.seconds))
    finally:
        server.stop()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
