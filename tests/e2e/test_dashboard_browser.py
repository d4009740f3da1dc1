"""The dashboard in a real browser: Debian's headless Chromium driven by Python Playwright.

A real server (uvicorn, SQLite) is filled through the JSON API; the browser logs in through the
form, and the numbers on the pages must equal the API's. Screenshots go to ``test-artifacts/``
(``DPLEDGER_TEST_ARTIFACTS`` overrides). Skips when Playwright or Chromium is missing; ``.ci/run``
installs both, so in CI it runs. No browser is ever downloaded (``playwright install`` is not
used): the system executable is launched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ADMIN_TOKEN, auth, run_body
from tests.integration.server import ROOT, Server

# .ci/run sets DPLEDGER_REQUIRE_BROWSER=1 once Chromium is installed: there, a skip would hide
# a broken setup, so a missing piece fails instead.
REQUIRED = os.environ.get("DPLEDGER_REQUIRE_BROWSER") == "1"
if REQUIRED:
    from playwright import sync_api
else:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs Python Playwright (the dev extra)"
    )

CHROMIUM = os.environ.get("DPLEDGER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("DPLEDGER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
DESCRIPTION = 'Handwritten digits <script>alert("xss")</script> & <b>bold</b>'

pytestmark = pytest.mark.skipif(
    not REQUIRED and not Path(CHROMIUM).is_file(),
    reason=f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)",
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "server.log").start()
    yield srv
    srv.stop()


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _fill(http: httpx.Client) -> dict[str, Any]:
    """Two datasets, three runs (one finished early, one refused), charges after all admissions."""
    _ok(
        http.post(
            "/v1/datasets",
            json={
                "name": "mnist",
                "target_epsilon": 3.0,
                "target_delta": 1e-5,
                "description": "Handwritten digits, 60,000 training images.",
            },
        ),
        201,
    )
    _ok(
        http.post(
            "/v1/datasets",
            json={
                "name": "cifar10",
                "target_epsilon": 8,
                "target_delta": 1e-6,
                "description": DESCRIPTION,
            },
        ),
        201,
    )
    first = _ok(http.post("/v1/runs", json=run_body(name="baseline", epochs=6)), 201)
    second = _ok(
        http.post("/v1/runs", json=run_body(name="wide", epochs=4, sample_rate=0.008)), 201
    )
    refused = http.post("/v1/runs", json=run_body(name="greedy", epochs=400))
    assert refused.status_code == 409, refused.text
    for epoch in range(2):
        _ok(http.post(f"/v1/runs/{second['id']}/epochs", json={"epoch": epoch}))
    _ok(http.post(f"/v1/runs/{second['id']}/finish"))
    for epoch in range(4):
        _ok(http.post(f"/v1/runs/{first['id']}/epochs", json={"epoch": epoch}))
    viewer = _ok(http.post("/v1/tokens", json={"name": "alice", "role": "viewer"}), 201)
    return {"run": first["id"], "viewer": viewer["token"]}


def _value(page: Any, selector: str) -> float | None:
    raw = page.locator(selector).first.get_attribute("data-value")
    return None if raw == "null" else float(raw)


def _chart_pixels(page: Any, canvas: str) -> int:
    """Return how many pixels of the canvas are painted (not fully transparent)."""
    return int(
        page.evaluate(
            """(selector) => {
                const canvas = document.querySelector(selector);
                const ctx = canvas.getContext("2d");
                const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
                let painted = 0;
                for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) painted++; }
                return painted;
            }""",
            canvas,
        )
    )


def _check_chart(page: Any, canvas: str) -> None:
    page.wait_for_selector(f"{canvas}[data-rendered=true]", timeout=5000)
    assert page.evaluate("window.dpledgerCharts.length") == 1
    assert _chart_pixels(page, canvas) > 2000, "the chart's canvas is blank"


def _check_overview(page: Any, api: httpx.Client) -> None:
    listed = page.locator("#datasets tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.dataset)"
    )
    assert listed == ["cifar10", "mnist"]
    for name in listed:
        budget = _ok(api.get(f"/v1/datasets/{name}/budget"))
        row = f"#datasets tr[data-dataset={name}]"
        for field in ("epsilon_spent", "epsilon_reserved", "epsilon_remaining", "target_epsilon"):
            assert _value(page, f"{row} [data-field={field}]") == budget[field], (name, field)
        assert page.locator(f"{row} [data-field=runs]").inner_text() == str(len(budget["runs"]))
    # A description is shown as text: no script ran (no dialog), no element was made from it.
    assert page.locator("tr[data-dataset=cifar10] .desc").inner_text() == DESCRIPTION
    assert page.locator("#datasets .desc script, #datasets .desc b").count() == 0


def _check_dataset_page(page: Any, api: httpx.Client) -> None:
    budget = _ok(api.get("/v1/datasets/mnist/budget"))
    for field in ("epsilon_spent", "epsilon_reserved", "epsilon_remaining", "epsilon_non_adaptive"):
        assert _value(page, f"#budget [data-field={field}]") == budget[field], field
        shown = page.locator(f"#budget [data-field={field}]").inner_text()
        assert shown == f"{budget[field]:.4f}"
    for run in budget["runs"]:
        row = f"#runs tr[data-run='{run['id']}']"
        assert page.locator(f"{row} [data-field=status]").inner_text() == run["status"]
        assert page.locator(f"{row} [data-field=epochs_charged]").inner_text() == str(
            run["epochs_charged"]
        )
        assert _value(page, f"{row} [data-field=epsilon_run]") == run["epsilon_run"]
    share_used = page.locator("#orders [data-field=share_used]").evaluate_all(
        "cells => cells.map(c => c.dataset.value === 'null' ? null : Number(c.dataset.value))"
    )
    assert share_used == [order["share_used"] for order in budget["orders"]]
    assert (
        page.locator("#description").inner_text() == "Handwritten digits, 60,000 training images."
    )
    _check_chart(page, "#spend-chart")
    history = page.evaluate("window.dpledgerCharts[0].data.datasets[0].data")
    assert len(history) == 6  # 2 + 4 charges
    assert history[-1] == budget["epsilon_spent"]


def test_dashboard_in_chromium(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=auth(ADMIN_TOKEN), timeout=30) as api:
        made = _fill(api)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
                page.on(
                    "console",
                    lambda msg: problems.append(msg.text) if msg.type == "error" else None,
                )

                page.goto(f"{server.url}/dashboard/datasets/mnist")
                assert page.url.startswith(f"{server.url}/login?next=")
                page.fill("#token", "dpl_not_a_token")
                page.click("button[type=submit]")
                assert page.locator(".error").inner_text() == "Unknown or revoked token."
                assert len(problems) == 1 and "401" in problems[0]  # the answer to that POST
                problems.clear()
                page.fill("#token", made["viewer"])
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/dashboard/datasets/mnist")
                cookie = next(c for c in context.cookies() if c["name"] == "dpledger_session")
                assert made["viewer"] not in cookie["value"]  # a session id, not the token
                assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
                assert page.evaluate("document.cookie") == ""  # invisible to scripts

                _check_dataset_page(page, api)
                shot = ARTIFACTS / "dashboard-dataset.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"dashboard screenshot: {shot}")

                page.click(f"a[href='/dashboard/runs/{made['run']}'] >> nth=0")
                page.wait_for_url(f"{server.url}/dashboard/runs/{made['run']}")
                run = _ok(api.get(f"/v1/runs/{made['run']}"))
                assert page.locator("#run-summary [data-field=epochs_charged]").inner_text() == str(
                    run["epochs_charged"]
                )
                assert page.locator("#entries tbody tr").count() == 1 + run["epochs_charged"]
                _check_chart(page, "#run-chart")
                page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

                page.goto(f"{server.url}/dashboard")
                _check_overview(page, api)
                page.screenshot(path=str(ARTIFACTS / "dashboard-datasets.png"), full_page=True)

                page.click("text=Log out")
                page.wait_for_url(f"{server.url}/login")
                page.goto(f"{server.url}/dashboard")
                assert page.url.startswith(f"{server.url}/login")
                assert problems == []
                _check_api_docs(page, problems)
            finally:
                browser.close()


def _check_api_docs(page: Any, problems: list[str]) -> None:
    """/docs and /redoc render from the vendored assets, with no CSP violation or script error."""
    base = page.url.split("/login")[0]
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15000)
    assert "dpledger" in page.locator(".swagger-ui .info .title").inner_text()
    page.screenshot(path=str(ARTIFACTS / "api-docs.png"))
    page.goto(f"{base}/redoc")
    page.wait_for_selector("h1", timeout=15000)
    assert "dpledger" in page.locator("h1").first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "api-redoc.png"))
    # ReDoc's "powered by" logo is an image on Redocly's CDN: the CSP blocks it, as it should.
    problems[:] = [p for p in problems if "cdn.redoc.ly/redoc/logo-mini.svg" not in p]
    assert problems == []  # Chromium reports each CSP violation as a console error
