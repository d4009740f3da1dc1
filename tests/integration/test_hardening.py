"""Issue 11 in-process (SQLite and PostgreSQL): size limits, refused characters, JSON errors,
the static metrics token, tokens that stay revoked, server-side dashboard sessions, vendored docs.

The black-box fault injection (lost connections, a database that goes away, restarts) is in
tests/integration/test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, select, update

from app.main import create_app
from app.models import ApiToken, DashboardSession
from app.settings import Settings
from tests.integration.conftest import ADMIN_TOKEN, auth, make_dataset, run_body, snapshot

pytestmark = pytest.mark.anyio

METRICS_TOKEN = "scrape_0123456789abcdef0123456789abcdef"
ORIGIN = {"Origin": "http://dpledger.test"}


async def _open(settings: Settings, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dpledger.test", headers=headers
        ) as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


@pytest.fixture
async def anonymous(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _open(settings):
        yield http


def is_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and isinstance(body["message"], str)


# --- body size, nesting -------------------------------------------------------------------------


async def test_an_oversize_body_is_refused_before_auth_and_parsing(anonymous, database_url):
    before = snapshot(database_url)
    big = b'{"name": "' + b"a" * (1 << 20) + b'"}'
    for headers in ({}, auth(ADMIN_TOKEN), auth("dpl_wrong")):
        response = await anonymous.post(
            "/v1/datasets", content=big, headers={"Content-Type": "application/json", **headers}
        )
        is_error(response, 413, "payload_too_large")
    assert snapshot(database_url) == before


async def test_the_limit_is_a_setting(database_url):
    settings = Settings(database_url=database_url, bootstrap_token=ADMIN_TOKEN, max_body_bytes=2048)
    async for http in _open(settings, **auth(ADMIN_TOKEN)):
        body = {
            "name": "mnist",
            "description": "x" * 1900,
            "target_epsilon": 3.0,
            "target_delta": 1e-5,
        }
        assert (await http.post("/v1/datasets", json=body)).status_code == 201
        body["description"] = "x" * 2000
        is_error(await http.post("/v1/datasets", json=body), 413, "payload_too_large")


async def test_streamed_chunks_are_counted_without_content_length():
    """A chunked body (no Content-Length) is counted as it arrives and cut at the limit."""
    from app.middleware import BodySizeLimitMiddleware

    reached = []

    async def app(scope, receive, send):
        reached.append(await receive())

    chunks = [{"type": "http.request", "body": b"x" * 1024, "more_body": True}] * 5
    sent: list[dict] = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await BodySizeLimitMiddleware(app, max_bytes=4000)(scope, receive, send)
    assert reached == [] and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["code"] == "payload_too_large"


@pytest.mark.parametrize("depth", [100_000, 5_000])
async def test_deeply_nested_json_is_a_clean_4xx(anonymous, database_url, depth):
    before = snapshot(database_url)
    for key in ("name", "description", "mechanism"):
        body = b'{"%s": ' % key.encode() + b"[" * depth + b"]" * depth + b"}"
        response = await anonymous.post(
            "/v1/runs" if key == "mechanism" else "/v1/datasets",
            content=body,
            headers={"Content-Type": "application/json", **auth(ADMIN_TOKEN)},
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["code"] in {"bad_request", "invalid_input"}
    assert snapshot(database_url) == before


# --- refused characters -------------------------------------------------------------------------

BAD = ["\x00", "\x1b[2J", "\u202e", "\x9b", "\x7f", "\u2066", "\ud800"]


@pytest.mark.parametrize("char", BAD, ids=[f"U+{ord(c[0]):04X}" for c in BAD])
async def test_refused_characters_in_bodies(anonymous, database_url, char):
    admin = auth(ADMIN_TOKEN)
    await make_dataset(_Admin(anonymous))
    before = snapshot(database_url)
    bodies = [
        (
            "/v1/datasets",
            {
                "name": "cifar",
                "description": f"a{char}b",
                "target_epsilon": 3.0,
                "target_delta": 1e-5,
            },
        ),
        ("/v1/runs", run_body(name=f"run{char}")),
        ("/v1/tokens", {"name": f"t{char}", "role": "viewer"}),
        ("/v1/tokens", {"name": "t", "role": "trainer", "datasets": [f"mnist{char}"]}),
    ]
    for path, body in bodies:
        # json.dumps writes \\u escapes, so the database would get the character itself.
        content = json.dumps(body).encode()
        response = await anonymous.post(
            path, content=content, headers={"Content-Type": "application/json", **admin}
        )
        is_error(response, 422, "invalid_input")
    assert snapshot(database_url) == before


class _Admin:
    """Adapter: make_dataset needs a client that sends the admin token."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def post(self, path: str, **kwargs):
        return await self.http.post(path, headers=auth(ADMIN_TOKEN), **kwargs)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/datasets/mn%00ist",
        "/v1/datasets/mnist%1B/budget",
        "/v1/datasets/%E2%80%AEmnist/ledger",
        "/v1/datasets?limit=10&x=%00",
        "/dashboard/datasets/a%00b",
        "/v1/datasets/mnist?next=%C2%9B",
    ],
)
async def test_refused_characters_in_paths_and_query_strings(anonymous, url):
    is_error(await anonymous.get(url, headers=auth(ADMIN_TOKEN)), 422, "invalid_input")
    is_error(await anonymous.get(url), 422, "invalid_input")  # also before authentication


async def test_plain_text_still_passes(anonymous):
    body = {
        "name": "ok",
        "description": "two\nlines\tand ünïcode ✓",
        "target_epsilon": 3.0,
        "target_delta": 1e-5,
    }
    response = await anonymous.post("/v1/datasets", json=body, headers=auth(ADMIN_TOKEN))
    assert response.status_code == 201, response.text
    assert response.json()["description"] == body["description"]


# --- errors that are always JSON ----------------------------------------------------------------


async def test_an_unexpected_exception_is_a_logged_json_500(settings, caplog):
    from app.logging_config import RequestIdFilter

    caplog.handler.addFilter(RequestIdFilter())  # as the service's own handler does
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret internals")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            with caplog.at_level(logging.ERROR):
                response = await http.get("/boom", headers={"X-Request-ID": "req-123"})
    is_error(response, 500, "internal_error")
    assert "req-123" in response.json()["message"] and response.headers["x-request-id"] == "req-123"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert logged and logged[0].exc_info and logged[0].request_id == "req-123"


async def test_a_database_gone_is_503_and_metrics_say_0(tmp_path):
    """SQLite: the database's directory disappears (connections closed): 503s, then recovery."""
    directory = tmp_path / "db"
    directory.mkdir()
    settings = Settings(
        database_url=f"sqlite:///{directory / 'ledger.db'}",
        bootstrap_token=ADMIN_TOKEN,
        metrics_token=METRICS_TOKEN,
    )
    async for http in _open(settings, **auth(ADMIN_TOKEN)):
        await make_dataset(http)
        directory.rename(tmp_path / "moved")
        http.app.state.engine.dispose()  # type: ignore[attr-defined]
        for method, path in (("GET", "/v1/datasets"), ("POST", "/v1/runs"), ("GET", "/healthz")):
            kwargs = {"json": run_body()} if method == "POST" else {}
            response = await http.request(method, path, **kwargs)
            is_error(response, 503, "database_unavailable")
            assert int(response.headers["retry-after"]) >= 1
        scrape = await http.get("/metrics", headers=auth(METRICS_TOKEN))
        assert scrape.status_code == 200
        assert "dpledger_database_up 0.0" in scrape.text
        is_error(
            await http.get("/metrics"), 503, "database_unavailable"
        )  # admin token: needs the DB
        (tmp_path / "moved").rename(directory)
        assert (await http.get("/healthz")).status_code == 200
        assert (
            "dpledger_database_up 1.0"
            in (await http.get("/metrics", headers=auth(METRICS_TOKEN))).text
        )


async def test_a_locked_sqlite_database_is_503_not_500(tmp_path):
    """Another process holds SQLite's write lock past the busy timeout: 503, retry later."""
    import sqlite3

    path = tmp_path / "ledger.db"
    settings = Settings(
        database_url=f"sqlite:///{path}", bootstrap_token=ADMIN_TOKEN, sqlite_busy_timeout_s=0.2
    )
    async for http in _open(settings, **auth(ADMIN_TOKEN)):
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            body = {"name": "mnist", "target_epsilon": 3.0, "target_delta": 1e-5}
            response = await http.post("/v1/datasets", json=body)
            is_error(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "5"
        finally:
            holder.close()
        await make_dataset(http)  # and once the lock is gone, it simply works


# --- metrics token ------------------------------------------------------------------------------


async def test_the_static_metrics_token(database_url):
    settings = Settings(
        database_url=database_url, bootstrap_token=ADMIN_TOKEN, metrics_token=METRICS_TOKEN
    )
    async for http in _open(settings):
        assert (await http.get("/metrics", headers=auth(METRICS_TOKEN))).status_code == 200
        is_error(await http.get("/metrics", headers=auth(METRICS_TOKEN[:-1])), 401, "unauthorized")
        is_error(await http.get("/metrics"), 401, "unauthorized")
        # The scrape token is no API token.
        is_error(await http.get("/v1/datasets", headers=auth(METRICS_TOKEN)), 401, "unauthorized")
        assert (await http.get("/metrics", headers=auth(ADMIN_TOKEN))).status_code == 200


# --- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["a", "dpl_short", "x" * 31, "dpl_" + "a" * 28 + " ", "dpl_" + "é" * 40, "dpl_" + "a" * 300],
)
def test_a_weak_bootstrap_token_is_refused_at_start(token):
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(database_url="sqlite://", bootstrap_token=token)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(database_url="sqlite://", metrics_token=token)


def test_serve_refuses_a_weak_bootstrap_token_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from app.settings import get_settings

    monkeypatch.setenv("DPLEDGER_BOOTSTRAP_TOKEN", "a")
    get_settings.cache_clear()
    from dpledger.cli import cli as root  # the root maps errors to exit codes

    try:
        result = CliRunner().invoke(root, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: invalid DPLEDGER_BOOTSTRAP_TOKEN") and "32 characters" in line


async def test_a_revoked_bootstrap_token_stays_revoked_after_a_restart(settings, caplog):
    from app.db import create_db_engine, make_session_factory
    from app.services.tokens import revoke_token

    async for http in _open(settings, **auth(ADMIN_TOKEN)):
        assert (await http.get("/v1/datasets")).status_code == 200
        with http.app.state.session_factory() as session:  # type: ignore[attr-defined]
            token_id = session.scalar(select(ApiToken.id).where(ApiToken.name == "bootstrap"))
            session.rollback()
            assert token_id is not None
            revoke_token(session, token_id)
        is_error(await http.get("/v1/datasets"), 401, "unauthorized")
    with caplog.at_level(logging.WARNING):
        async for http in _open(settings, **auth(ADMIN_TOKEN)):  # a restart, or another replica
            is_error(await http.get("/v1/datasets"), 401, "unauthorized")
    assert any("stays revoked" in r.getMessage() for r in caplog.records)
    engine = create_db_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            rows = session.scalars(select(ApiToken)).all()
    finally:
        engine.dispose()
    assert [(r.name, r.revoked_at is not None) for r in rows] == [("bootstrap", True)]


async def test_the_first_admin_token_goes_to_a_private_file_not_the_log(
    database_url, tmp_path, caplog
):
    token_file = tmp_path / "secret" / "first-token"
    settings = Settings(database_url=database_url, initial_token_file=token_file)
    with caplog.at_level(logging.DEBUG):
        async for http in _open(settings):
            token = token_file.read_text().strip()
            assert (await http.get("/v1/datasets", headers=auth(token))).status_code == 200
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert all(token not in r.getMessage() and token not in str(r.__dict__) for r in caplog.records)
    assert any(str(token_file) in r.getMessage() for r in caplog.records)


async def test_an_unwritable_token_file_stops_the_start_and_stores_no_token(database_url, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = Settings(database_url=database_url, initial_token_file=blocker / "token")
    with pytest.raises(RuntimeError, match="DPLEDGER_INITIAL_TOKEN_FILE"):
        async for _http in _open(settings):
            pass
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(ApiToken.id)).all() == []  # the next start tries again
    finally:
        engine.dispose()


async def test_a_token_scope_must_name_existing_datasets(anonymous, database_url):
    admin = auth(ADMIN_TOKEN)
    await _Admin(anonymous).post(
        "/v1/datasets", json={"name": "mnist", "target_epsilon": 3.0, "target_delta": 1e-5}
    )
    before = snapshot(database_url)
    response = await anonymous.post(
        "/v1/tokens",
        json={"name": "t", "role": "trainer", "datasets": ["mnist", "later"]},
        headers=admin,
    )
    assert response.status_code == 422 and "later" in response.json()["message"]
    assert response.json()["missing"] == ["later"]
    assert snapshot(database_url) == before
    ok = await anonymous.post(
        "/v1/tokens", json={"name": "t", "role": "trainer", "datasets": ["mnist"]}, headers=admin
    )
    assert ok.status_code == 201


# --- dashboard sessions -------------------------------------------------------------------------


async def _login(http: httpx.AsyncClient, token: str, **headers: str) -> httpx.Response:
    return await http.post("/login", data={"token": token}, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://dpledger.test.evil.example"},
    ],
)
async def test_cross_site_login_and_logout_are_refused(anonymous, headers):
    response = await _login(anonymous, ADMIN_TOKEN, **headers)
    is_error(response, 403, "cross_site_request")
    assert "set-cookie" not in response.headers
    ok = await _login(anonymous, ADMIN_TOKEN, **ORIGIN)
    assert ok.status_code == 303
    is_error(await anonymous.post("/logout", headers=headers), 403, "cross_site_request")
    assert (await anonymous.get("/dashboard")).status_code == 200  # still logged in


async def test_a_same_site_referer_is_enough(anonymous):
    response = await _login(
        anonymous, ADMIN_TOKEN, Referer="http://dpledger.test/login?next=/dashboard"
    )
    assert response.status_code == 303


async def test_the_cookie_is_a_hashed_server_side_session(anonymous, database_url):
    response = await _login(anonymous, ADMIN_TOKEN, **ORIGIN)
    session_id = anonymous.cookies["dpledger_session"]
    assert ADMIN_TOKEN not in response.headers["set-cookie"] and len(session_id) >= 40
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            hashes = conn.execute(select(DashboardSession.session_hash)).scalars().all()
            assert hashes == [hashlib.sha256(session_id.encode()).hexdigest()]
            # Logout deletes it: the old cookie is worthless afterwards.
            await anonymous.post("/logout", headers=ORIGIN)
            assert conn.execute(select(DashboardSession.id)).all() == []
    finally:
        engine.dispose()
    anonymous.cookies.set("dpledger_session", session_id, domain="dpledger.test")
    assert (await anonymous.get("/dashboard")).status_code == 303


async def test_sessions_expire_and_end_with_their_token(anonymous, database_url):
    from app.services.tokens import revoke_token

    created = await anonymous.post(
        "/v1/tokens", json={"name": "v", "role": "viewer"}, headers=auth(ADMIN_TOKEN)
    )
    viewer = created.json()
    await _login(anonymous, viewer["token"], **ORIGIN)
    assert (await anonymous.get("/dashboard")).status_code == 200
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(DashboardSession).values(expires_at=DashboardSession.created_at))
    finally:
        engine.dispose()
    assert (await anonymous.get("/dashboard")).status_code == 303  # expired
    await _login(anonymous, viewer["token"], **ORIGIN)
    assert (await anonymous.get("/dashboard")).status_code == 200
    with anonymous.app.state.session_factory() as session:  # type: ignore[attr-defined]
        revoke_token(session, viewer["id"])
    assert (await anonymous.get("/dashboard")).status_code == 303  # revoked with its token


# --- docs, root ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_api_docs_are_vendored_under_the_dashboard_csp(anonymous, path):
    from app.api.routes.dashboard import _PAGE_HEADERS

    page = await anonymous.get(path)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    if path == "/redoc":  # ReDoc's <style> elements carry a per-response nonce
        nonce = re.search(r'data-style-nonce="([^"]+)"', page.text).group(1)
        assert len(nonce) >= 16 and f"'nonce-{nonce}'" in policy
        policy = re.sub(r"style-src 'self' [^;]*;", "style-src 'self';", policy)
        again = (await anonymous.get(path)).headers["content-security-policy"]
        assert f"'nonce-{nonce}'" not in again  # a new nonce per response
    assert policy == _PAGE_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assets = [src for src in _srcs(page.text) if not src.startswith("data:")]
    assert assets and all(src.startswith("/dashboard/static/") for src in assets), assets
    for src in assets:
        asset = await anonymous.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert "<script>" not in page.text  # no inline script (the CSP would block it)


def _srcs(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_vendored_assets_carry_licence_and_version():
    vendor = Path(__file__).resolve().parents[2] / "app" / "static" / "vendor"
    for name, version in (("swagger-ui", "5.35.0"), ("redoc", "2.5.4")):
        assert (vendor / name / "LICENSE").is_file()
        readme = (vendor / name / "README.md").read_text()
        assert version in readme
        for line in readme.splitlines():
            if line.startswith("- sha256 of"):
                file, digest = line.removeprefix("- sha256 of `").split("`: ")
                assert hashlib.sha256((vendor / name / file).read_bytes()).hexdigest() == digest


async def test_root_redirects_to_the_dashboard_and_stays_out_of_the_schema(anonymous):
    response = await anonymous.get("/")
    assert response.status_code in (302, 303, 307) and response.headers["location"] == "/dashboard"
    schema = (await anonymous.get("/openapi.json")).json()
    assert "/" not in schema["paths"] and "/docs" not in schema["paths"]
