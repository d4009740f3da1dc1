"""The dashboard: server-rendered pages (Jinja2) over the ledger, the login form, the API docs.

Pages accept a login cookie (set by ``POST /login``) or, for API clients, a bearer header; any
role may read, with the same per-dataset rules as the JSON API. Without a valid login a page
answers 303 to ``/login``.

The cookie holds a random session id, never the API token: the session is stored server-side
(hashed, expiring, ended by logout and by the token's revocation; :mod:`app.services.sessions`).
It is HttpOnly (no script can read it), SameSite=Lax, Secure when the request came over https.
``POST /login`` and ``POST /logout`` also check that ``Origin`` (or, without it, ``Referer``)
names this very host, and refuse a cross-site post with 403 ``cross_site_request``. Tokens never
appear in URLs: the login form is a POST. Jinja autoescapes every value, and the pages carry a
Content-Security-Policy that allows scripts from this origin only (chart data travels as JSON in a
non-executable ``<script type="application/json">`` block). ``/docs`` and ``/redoc`` load Swagger
UI and ReDoc from vendored copies under the same policy.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api.deps import SESSION_COOKIE, PagePrincipalDep, SessionDep, SettingsDep
from app.api.routes.runs import RunId
from app.errors import CrossSiteRequestError
from app.services import dashboard, sessions
from app.services import statement as run_statement

_HERE = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = _HERE / "templates"
STATIC_DIR = _HERE / "static"
STATIC_PATH = "/dashboard/static"
STATIC_NAME = "dashboard-static"

#: Where a login may send the browser afterwards: dashboard paths only (no open redirect).
_NEXT_PATH = re.compile(r"/dashboard(/[A-Za-z0-9_.~-]+)*/?")
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _format_epsilon(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.4f}"


def _make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["eps"] = _format_epsilon
    return Jinja2Templates(env=env)


templates = _make_templates()
router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    """Return the app for the vendored chart library, the stylesheet and the page script."""
    return StaticFiles(directory=STATIC_DIR)


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = status.HTTP_200_OK,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    context = {"static_path": STATIC_PATH, **context}
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=headers or _PAGE_HEADERS
    )


#: The two ``<style>`` elements ReDoc 2.5.4's bundle inserts when it loads, before it knows the
#: nonce: perfect-scrollbar's stylesheet, and an empty one. Recompute them when ReDoc is updated
#: (Chromium names the hash of a refused style; the browser test fails on any refusal).
_REDOC_STYLE_HASHES = (
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
)


def _with_style_nonce(nonce: str) -> dict[str, str]:
    """The page headers, whose CSP also admits ReDoc's ``<style>`` elements (nonce, hashes)."""
    policy = _PAGE_HEADERS["Content-Security-Policy"].replace(
        "style-src 'self'", f"style-src 'self' 'nonce-{nonce}' {' '.join(_REDOC_STYLE_HASHES)}"
    )
    return {**_PAGE_HEADERS, "Content-Security-Policy": policy}


def _safe_next(value: str | None) -> str:
    # No "." or ".." segments either, so the target stays under /dashboard once normalised.
    ok = value and _NEXT_PATH.fullmatch(value) and "/." not in value
    return value if ok and value else "/dashboard"


def _to_login(request: Request) -> RedirectResponse:
    # The path only (no query string), and only if it is a dashboard path.
    target = _safe_next(request.url.path)
    return RedirectResponse(f"/login?next={target}", status_code=status.HTTP_303_SEE_OTHER)


def render_error_page(request: Request, status_code: int, message: str) -> HTMLResponse | None:
    """Return an HTML error page for a browser on a dashboard page, else None (JSON as usual).

    Called by the app's one error handler, so the mapping of errors to statuses stays there.
    """
    if not request.url.path.startswith("/dashboard"):
        return None
    if "text/html" not in request.headers.get("accept", ""):
        return None
    return _page(request, "error.html", {"status": status_code, "message": message}, status_code)


@router.get("/login")
def login_form(request: Request, next: Annotated[str | None, Query()] = None) -> Response:
    """Show the login form."""
    return _page(request, "login.html", {"next": _safe_next(next), "error": None})


def require_same_origin(request: Request) -> None:
    """Refuse a form posted from another site: ``Origin`` (else ``Referer``) must name this host.

    The host part is compared (not the scheme), so a TLS-terminating proxy in front does not
    break logins; a request with neither header is refused too.
    """
    host = request.headers.get("host", "").lower()
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null" or not host or urlsplit(source).netloc.lower() != host:
        raise CrossSiteRequestError(
            "cross-site form post refused: Origin or Referer must name this host"
        )


SameOriginDep = Annotated[None, Depends(require_same_origin)]


def _cookie_flags(request: Request) -> dict[str, Any]:
    return {
        "path": "/",
        "httponly": True,
        "samesite": "lax",
        "secure": request.url.scheme == "https",
    }


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _same_origin: SameOriginDep,
    token: Annotated[str, Form()],
    next: Annotated[str | None, Form()] = None,
) -> Response:
    """Check the token; on success start a session (its id in the cookie) and go on."""
    principal = dashboard.try_authenticate(session, token.strip())
    if principal is None:
        context = {"next": _safe_next(next), "error": "Unknown or revoked token."}
        return _page(request, "login.html", context, status.HTTP_401_UNAUTHORIZED)
    max_age = settings.session_max_age_s
    session_id = sessions.start_session(session, principal, max_age_s=max_age)
    response = RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, session_id, max_age=max_age, **_cookie_flags(request))
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, _same_origin: SameOriginDep) -> Response:
    """End the session and clear the login cookie."""
    sessions.end_session(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, **_cookie_flags(request))
    return response


@router.get("/dashboard")
def list_datasets_page(
    request: Request,
    session: SessionDep,
    principal: PagePrincipalDep,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> Response:
    """All datasets this caller may read: budget bar, number of runs, last activity."""
    if principal is None:
        return _to_login(request)
    overview = dashboard.list_dataset_summaries(session, principal, offset=offset)
    return _page(request, "datasets.html", {"principal": principal, "overview": overview})


@router.get("/dashboard/datasets/{name}")
def get_dataset_page(
    name: str,
    request: Request,
    session: SessionDep,
    principal: PagePrincipalDep,
    runs_after: Annotated[int, Query(ge=0, description="Runs page cursor.")] = 0,
) -> Response:
    """One dataset: epsilon over time, a page of runs, per-order headroom, non-adaptive epsilon."""
    if principal is None:
        return _to_login(request)
    detail = dashboard.get_dataset_detail(session, name, principal, runs_after=runs_after)
    chart = dashboard.spend_chart(detail.history, detail.budget.target_epsilon)
    return _page(request, "dataset.html", {"principal": principal, "d": detail, "chart": chart})


@router.get("/dashboard/runs/{run_id}")
def get_run_page(
    run_id: RunId, request: Request, session: SessionDep, principal: PagePrincipalDep
) -> Response:
    """One run: its planned against its charged RDP curve, and its ledger entries."""
    if principal is None:
        return _to_login(request)
    detail = dashboard.get_run_detail(session, run_id, principal)
    chart = dashboard.run_chart(detail)
    statement = run_statement.page_statement(session, run_id, principal)
    context = {"principal": principal, "r": detail, "chart": chart, "s": statement}
    return _page(request, "run.html", context)


@router.get("/")
def root() -> RedirectResponse:
    """Send a browser to the dashboard."""
    return RedirectResponse("/dashboard", status_code=status.HTTP_307_TEMPORARY_REDIRECT)


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    """The API's interactive documentation (Swagger UI, vendored)."""
    context = {
        "ui": "swagger",
        "title": "API docs",
        "openapi_url": request.app.openapi_url,
        "style_nonce": "",
    }
    return _page(request, "api_docs.html", context)


@router.get("/redoc")
def redoc(request: Request) -> Response:
    """The API's reference documentation (ReDoc, vendored).

    ReDoc styles itself through ``<style>`` elements (styled-components), which the dashboard's
    CSP refuses; this page's CSP also admits style elements carrying a per-response nonce, which
    ReDoc puts on its own (its ``nonce`` option). Scripts stay same-origin only.
    """
    nonce = secrets.token_urlsafe(16)
    context = {
        "ui": "redoc",
        "title": "API reference",
        "openapi_url": request.app.openapi_url,
        "style_nonce": nonce,
    }
    return _page(request, "api_docs.html", context, headers=_with_style_nonce(nonce))
