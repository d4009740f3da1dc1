"""The dashboard over HTTP (in-process, SQLite and PostgreSQL): login, cookies, access, escaping.

The browser test (tests/e2e/test_dashboard_browser.py) checks the rendering; these check the
server's side: redirects, cookie flags, read rules, the numbers against the API, the history.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.services import dashboard
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body

pytestmark = pytest.mark.anyio

HTML = {"Accept": "text/html"}
SAME_ORIGIN = {"Origin": "http://dpledger.test"}


@pytest.fixture
async def browser(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no token, like a browser before login (cookies are kept)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # A browser sends Origin with every form post (checked by /login and /logout).
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dpledger.test", headers=SAME_ORIGIN
        ) as http:
            yield http


async def _token(client: httpx.AsyncClient, role: str, datasets: list[str] | None = None) -> str:
    body = {"name": f"{role}-token", "role": role, "datasets": datasets or []}
    response = await client.post("/v1/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def _run(client: httpx.AsyncClient, charges: int, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/v1/runs", json=run_body(**overrides))
    assert response.status_code == 201, response.text
    run = dict(response.json())
    for epoch in range(charges):
        charged = await client.post(f"/v1/runs/{run['id']}/epochs", json={"epoch": epoch})
        assert charged.status_code == 200, charged.text
    return run


async def _login(browser: httpx.AsyncClient, token: str, **form: str) -> httpx.Response:
    return await browser.post("/login", data={"token": token, **form})


def _values(html: str, field: str) -> list[float | None]:
    found = re.findall(rf'data-field="{field}" data-value="([^"]*)"', html)
    return [None if v == "null" else float(v) for v in found]


def _chart(html: str, chart_id: str) -> dict[str, Any]:
    match = re.search(rf'<script type="application/json" id="{chart_id}-data">(.*?)</script>', html)
    assert match, f"no {chart_id} on the page"
    return dict(json.loads(match.group(1)))


# --- login, cookie, logout ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/datasets/mnist", "/dashboard/runs/1"])
async def test_pages_redirect_to_the_login_form_without_a_login(browser, path):
    response = await browser.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next={path}"
    form = await browser.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="token"' in form.text and 'method="post"' in form.text
    assert f'name="next" value="{path}"' in form.text


async def test_a_stale_cookie_counts_as_not_logged_in(browser):
    browser.cookies.set("dpledger_session", "not-a-session", domain="dpledger.test")
    response = await browser.get("/dashboard")
    assert response.status_code == 303


async def test_login_sets_an_httponly_samesite_cookie(browser, client):
    await make_dataset(client)
    response = await _login(browser, ADMIN_TOKEN, next="/dashboard/datasets/mnist")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/datasets/mnist"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("dpledger_session=") and ADMIN_TOKEN not in cookie
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=lax", "path=/"} <= flags
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    assert ADMIN_TOKEN not in response.headers["location"]
    page = await browser.get("/dashboard/datasets/mnist")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


async def test_the_cookie_is_secure_over_https(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="https://dpledger.test",
            headers={"Origin": "https://dpledger.test"},
        ) as http:
            response = await _login(http, ADMIN_TOKEN)
            assert "secure" in {
                p.strip().lower() for p in response.headers["set-cookie"].split(";")
            }
            logout = await http.post("/logout")
            assert "secure" in logout.headers["set-cookie"].lower()


async def test_a_wrong_token_shows_the_form_again(browser):
    response = await _login(browser, "dpl_wrong", next="/dashboard")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert "Unknown or revoked token." in response.text
    assert "set-cookie" not in response.headers
    assert "Traceback" not in response.text and "dpl_wrong" not in response.text
    assert (await browser.get("/dashboard")).status_code == 303


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example", "/v1/tokens", "/dashboard/../v1/tokens"]
)
async def test_login_never_redirects_outside_the_dashboard(browser, target):
    response = await _login(browser, ADMIN_TOKEN, next=target)
    assert response.headers["location"] == "/dashboard"


async def test_logout_clears_the_cookie(browser):
    await _login(browser, ADMIN_TOKEN)
    assert (await browser.get("/dashboard")).status_code == 200
    response = await browser.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith('dpledger_session="";') and "max-age=0" in cookie
    assert (await browser.get("/dashboard")).status_code == 303


async def test_login_and_logout_are_posts_only(browser):
    assert (await browser.get("/logout")).status_code == 405
    response = await browser.get(f"/login?token={ADMIN_TOKEN}")
    assert "set-cookie" not in response.headers


# --- access -------------------------------------------------------------------------------------


async def test_a_viewer_sees_every_page(browser, client):
    await make_dataset(client)
    run = await _run(client, charges=2)
    await _login(browser, await _token(client, "viewer"))
    for path in ("/dashboard", "/dashboard/datasets/mnist", f"/dashboard/runs/{run['id']}"):
        response = await browser.get(path)
        assert response.status_code == 200, (path, response.text)


async def test_a_trainer_sees_only_its_datasets(browser, client):
    await make_dataset(client, "mnist")
    await make_dataset(client, "cifar10")
    other = await _run(client, charges=1, dataset="cifar10")
    await _login(browser, await _token(client, "trainer", ["mnist"]))
    overview = await browser.get("/dashboard")
    assert 'data-dataset="mnist"' in overview.text
    assert "cifar10" not in overview.text
    for path in ("/dashboard/datasets/cifar10", f"/dashboard/runs/{other['id']}"):
        page = await browser.get(path, headers=HTML)
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert "may not read" in page.text
        api_client = await browser.get(path)  # no Accept: text/html, the usual JSON error
        assert api_client.status_code == 403 and api_client.json()["code"] == "forbidden"


async def test_unknown_dataset_and_run_are_404(client):
    assert (await client.get("/dashboard/datasets/nope", headers=HTML)).status_code == 404
    response = await client.get("/dashboard/runs/999")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


async def test_a_bearer_header_works_and_a_wrong_one_is_401(client):
    assert (await client.get("/dashboard")).status_code == 200
    response = await client.get("/dashboard", headers=auth("dpl_wrong"))
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


async def test_pages_are_not_in_the_openapi_schema(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith(("/dashboard", "/login", "/logout"))]


async def test_static_files_are_served(browser):
    chart = await browser.get("/dashboard/static/vendor/chartjs/chart.umd.min.js")
    assert chart.status_code == 200 and "Chart.js v4" in chart.text[:200]
    assert (await browser.get("/dashboard/static/dashboard.js")).status_code == 200
    assert (await browser.get("/dashboard/static/../settings.py")).status_code == 404


# --- content ------------------------------------------------------------------------------------


async def test_user_supplied_text_is_escaped(client):
    await make_dataset(
        client, description='<script>alert("x")</script><img src=x onerror=alert(1)>'
    )
    run = await _run(client, charges=1, name="<b>bold</b> & </script><script>alert(2)</script>")
    for path in ("/dashboard", "/dashboard/datasets/mnist", f"/dashboard/runs/{run['id']}"):
        html = (await client.get(path)).text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
    dataset_page = (await client.get("/dashboard/datasets/mnist")).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in dataset_page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;/script&gt;" in dataset_page


async def test_numbers_equal_the_budget_endpoint(client):
    await make_dataset(client)
    await make_dataset(client, "cifar10", target_epsilon=8.0)
    first = await _run(client, charges=0, name="a", epochs=5)
    second = await _run(client, charges=2, name="b", epochs=3)
    for epoch in range(3):
        await client.post(f"/v1/runs/{first['id']}/epochs", json={"epoch": epoch})
    await client.post(f"/v1/runs/{second['id']}/finish")
    budget = (await client.get("/v1/datasets/mnist/budget")).json()

    page = (await client.get("/dashboard/datasets/mnist")).text
    for field in ("epsilon_spent", "epsilon_reserved", "epsilon_remaining", "epsilon_non_adaptive"):
        assert _values(page, field) == [budget[field]], field
    assert _values(page, "epsilon_run") == [
        r["epsilon_run"] for r in budget["by_kind"] + budget["runs"]
    ]
    assert _values(page, "share_used") == [o["share_used"] for o in budget["orders"]]

    history = _chart(page, "spend-chart")["datasets"]
    assert len(history[0]["data"]) == 5
    assert history[0]["data"][-1] == budget["epsilon_spent"]
    assert history[1]["data"][-1] == budget["epsilon_non_adaptive"]
    assert history[0]["data"] == sorted(history[0]["data"])  # spending only grows

    overview = (await client.get("/dashboard")).text
    assert re.findall(r'data-dataset="([^"]+)"', overview) == ["cifar10", "mnist"]
    assert _values(overview, "epsilon_spent") == [0.0, budget["epsilon_spent"]]
    assert _values(overview, "epsilon_remaining")[1] == budget["epsilon_remaining"]
    assert re.findall(r'data-field="runs">(\d+)<', overview) == ["0", "2"]

    run_page = (await client.get(f"/dashboard/runs/{first['id']}")).text
    assert _values(run_page, "epsilon_run") == [budget["runs"][0]["epsilon_run"]]
    assert _values(run_page, "epsilon_after")[-1] == budget["runs"][0]["epsilon_run"]
    curve = _chart(run_page, "run-chart")["datasets"]
    assert [len(series["data"]) for series in curve] == [12, 12]
    statement = (await client.get(f"/v1/runs/{first['id']}/statement")).json()
    assert _values(run_page, "epsilon_rdp") == [statement["dp_sgd"]["epsilon_rdp"]]
    assert _values(run_page, "epsilon_pld") == [statement["dp_sgd"]["epsilon_pld"]]
    assert _values(run_page, "statement_epsilon_spent") == [budget["epsilon_spent"]]


async def test_history_replays_pay_as_you_go_runs(client):
    await make_dataset(client)
    planned = await _run(client, charges=1, name="planned", epochs=4)
    body = run_body(name="payg", epochs=3, reservation="epoch")
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    for epoch in range(3):
        await client.post(f"/v1/runs/{response.json()['id']}/epochs", json={"epoch": epoch})
    await client.post(f"/v1/runs/{planned['id']}/epochs", json={"epoch": 1})
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    page = (await client.get("/dashboard/datasets/mnist")).text
    spent = _chart(page, "spend-chart")["datasets"][0]["data"]
    assert len(spent) == 5 and spent[-1] == budget["epsilon_spent"]
    run_page = (await client.get(f"/dashboard/runs/{response.json()['id']}")).text
    assert "holds no reservation" in run_page
    assert [s["label"] for s in _chart(run_page, "run-chart")["datasets"]] == ["charged"]


async def test_history_ignores_black_box_releases_in_the_filter(client):
    """An approximate-DP release is charged with an all-zero RDP: the filter replay skips it."""
    response = await client.post(
        "/v1/datasets",
        json={
            "name": "mnist",
            "target_epsilon": 3.0,
            "target_delta": 1e-5,
            "approx_dp_epsilon": 1.0,
            "approx_dp_delta": 1e-6,
        },
    )
    assert response.status_code == 201, response.text
    release = {"kind": "approx_dp_release", "epsilon": 0.5, "delta": 1e-7}
    body = {"dataset": "mnist", "name": "count", "mechanism": release}
    assert (await client.post("/v1/runs", json=body)).status_code == 201
    await _run(client, charges=2, epochs=3)
    page = (await client.get("/dashboard/datasets/mnist")).text
    spent = _chart(page, "spend-chart")["datasets"][0]["data"]
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    assert spent[0] == 0.0  # the release alone: nothing in the filter
    assert spent[-1] + 0.5 == pytest.approx(budget["epsilon_spent"], rel=1e-12)
    assert _values(page, "epsilon_spent") == [budget["epsilon_spent"]]


@pytest.mark.parametrize(
    "mechanism",
    [
        {"kind": "laplace_release", "sensitivity": 1.0, "noise_scale": 2.0},
        {"kind": "gaussian_release", "sensitivity": 1.0, "noise_std": 4.0},
        {"kind": "pate", "aggregator": "gnmax", "noise_multiplier": 40.0, "queries": 100},
    ],
)
async def test_run_pages_of_other_mechanisms(client, mechanism):
    await make_dataset(client)
    response = await client.post(
        "/v1/runs", json={"dataset": "mnist", "name": "other", "mechanism": mechanism}
    )
    assert response.status_code == 201, response.text
    page = await client.get(f"/dashboard/runs/{response.json()['id']}")
    assert page.status_code == 200
    assert f'data-field="kind">{mechanism["kind"]}<' in page.text
    assert (await client.get("/dashboard/datasets/mnist")).status_code == 200


async def test_spend_by_mechanism_kind_equals_the_budget_endpoint(client):
    await make_dataset(client, target_epsilon=8.0)
    await _run(client, charges=2, epochs=3)
    pate = {"kind": "pate", "aggregator": "gnmax", "noise_multiplier": 60.0, "queries": 50}
    job = await client.post("/v1/runs", json={"dataset": "mnist", "name": "p", "mechanism": pate})
    await client.post(f"/v1/runs/{job.json()['id']}/batches", json={"batch": 0})
    release = {"kind": "gaussian_release", "sensitivity": 1.0, "noise_std": 5.0}
    await client.post("/v1/runs", json={"dataset": "mnist", "name": "g", "mechanism": release})
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    page = (await client.get("/dashboard/datasets/mnist")).text
    kinds = re.findall(r'<tr data-kind="([a-z_]+)">', page)
    assert (
        kinds
        == [row["kind"] for row in budget["by_kind"]]
        == [
            "dp_sgd",
            "pate",
            "gaussian_release",
        ]
    )
    per_kind = [row["epsilon_run"] for row in budget["by_kind"]]
    per_run = [row["epsilon_run"] for row in budget["runs"]]
    assert _values(page, "epsilon_run") == per_kind + per_run
    assert re.findall(r'data-field="kind">([a-z_]+)<', page) == [
        "dp_sgd",
        "pate",
        "gaussian_release",
    ]


async def test_a_long_ledger_is_sampled(client, monkeypatch):
    monkeypatch.setattr(dashboard, "MAX_SPEND_POINTS", 4)
    await make_dataset(client)
    await _run(client, charges=9, epochs=9)
    budget = (await client.get("/v1/datasets/mnist/budget")).json()
    page = (await client.get("/dashboard/datasets/mnist")).text
    spent = _chart(page, "spend-chart")["datasets"][0]["data"]
    assert len(spent) == 4 and spent[-1] == budget["epsilon_spent"]
    assert "4 of 9 charges" in page


def test_sample_indices_keep_the_ends():
    assert dashboard.sample_indices(3, 5) == {0, 1, 2}
    picked = dashboard.sample_indices(1000, 10)
    assert len(picked) == 10 and {0, 999} <= picked
    assert dashboard.sample_indices(0, 10) == set()


def test_budget_bar_shares():
    bar = dashboard.budget_bar(target_epsilon=4.0, spent=1.0, reserved=3.0, remaining=1.0)
    assert (bar.spent, bar.reserved, bar.remaining) == (0.25, 0.5, 0.25)
    assert bar.remaining_from == 0.75
    full = dashboard.budget_bar(target_epsilon=4.0, spent=None, reserved=None, remaining=0.0)
    assert (full.spent, full.reserved, full.remaining) == (1.0, 0.0, 0.0)


def test_every_template_and_static_file_ships_in_the_package():
    """pyproject's package-data globs cover app/templates and app/static (a wheel, the image)."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["app"]
    app_dir = root / "app"
    shipped = {path for pattern in globs for path in app_dir.glob(pattern)}
    wanted = {
        path
        for folder in ("templates", "static")
        for path in (app_dir / folder).rglob("*")
        if path.is_file()
    }
    assert wanted and wanted <= shipped


async def test_the_dataset_page_lists_runs_a_page_at_a_time(client, monkeypatch):
    monkeypatch.setattr(dashboard, "RUNS_PAGE_SIZE", 2)
    await make_dataset(client, target_epsilon=50.0)
    ids = [
        (await client.post("/v1/runs", json=run_body(name=f"p{i}", epochs=1))).json()["id"]
        for i in range(3)
    ]
    first = (await client.get("/dashboard/datasets/mnist")).text
    listed = [int(i) for i in re.findall(r'data-run="(\d+)"', first)]
    assert listed == ids[:2]
    link = re.search(r'href="\?runs_after=(\d+)" data-field="runs_next"', first)
    assert link is not None and int(link.group(1)) == ids[1]
    second = (await client.get(f"/dashboard/datasets/mnist?runs_after={link.group(1)}")).text
    assert [int(i) for i in re.findall(r'data-run="(\d+)"', second)] == ids[2:]
    assert 'data-field="runs_next"' not in second
    overview = (await client.get("/dashboard")).text
    assert re.search(r'data-field="runs">\s*3\s*<', overview), "the overview counts every run"
