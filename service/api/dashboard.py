"""`/dashboard`: the operator page (static files in service/static/dashboard/) and its session: sign in with an API
key, read the session's CSRF value, sign out. The page's scripts then call the ordinary /v1 API with the cookie."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie
from litestar.response import File
from litestar.static_files import create_static_files_router

from service.api.context import context, key_record, session_key_id
from service.api.sessions import SESSION_COOKIE, Session
from service.errors import Forbidden, Unauthorized
from service.ids import secret_matches, split_api_key
from service.timestamps import to_iso

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "static" / "dashboard"


class SessionInfo(msgspec.Struct):
    key_id: str
    key_name: str
    csrf_token: str
    expires_at: str


def _info(session: Session, key_name: str) -> SessionInfo:
    return SessionInfo(session.key_id, key_name, session.csrf_token, to_iso(session.expires_at, "seconds"))


def _same_origin(request: Request[Any, Any, Any]) -> bool:
    """Whether a browser sent the sign-in from this origin (as reached directly, or as REELAY_PUBLIC_URL behind a
    proxy): a page elsewhere must not sign a visitor in under its own key (login CSRF). Clients that send neither
    header (curl, tests) are not browsers."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    public = urlsplit(context(request).settings.public_url)
    return origin is None or origin in (
        f"{request.url.scheme}://{request.url.netloc}",
        f"{public.scheme}://{public.netloc}",
    )


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https" or context(request).settings.public_url.startswith("https://")


@get("/dashboard", include_in_schema=False)
async def dashboard_page() -> File:
    return File(DASHBOARD_DIR / "index.html", content_disposition_type="inline", media_type="text/html")


@post("/dashboard/session", status_code=200, include_in_schema=False)
async def sign_in(request: Request[Any, Any, Any]) -> Response[SessionInfo]:
    """A form post (`api_key`) from the sign-in page: sets the session cookie."""
    if not _same_origin(request):
        raise Forbidden("sign in from the dashboard's own page", code="csrf_failed")
    ctx = context(request)
    if ctx.sessions is None:
        raise Unauthorized("the dashboard is not available here")
    raw = (await request.form()).get("api_key", "")
    parts = split_api_key(str(raw).strip())
    if parts is None:
        raise Unauthorized("the API key is not valid")
    record = await key_record(ctx, parts[0])
    if record is None or not secret_matches(parts[1], record.secret_hash):
        raise Unauthorized("the API key is not valid")
    value, session = ctx.sessions.issue(record.id)
    cookie = Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/",
        max_age=int(ctx.sessions.ttl_seconds),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return Response(_info(session, record.name), cookies=[cookie])


@get("/dashboard/session", include_in_schema=False)
async def session_info(request: Request[Any, Any, Any]) -> SessionInfo:
    """Who is signed in, and the CSRF value the page sends with its unsafe requests; 401 when signed out."""
    ctx = context(request)
    key_id = session_key_id(request, ctx)
    record = await key_record(ctx, key_id)
    session = ctx.sessions.read(request.cookies.get(SESSION_COOKIE)) if ctx.sessions else None
    if record is None or session is None:
        raise Unauthorized("the API key is not valid")
    return _info(session, record.name)


@delete("/dashboard/session", status_code=204, include_in_schema=False)
async def sign_out(request: Request[Any, Any, Any]) -> Response[None]:
    """Clears the cookie, whatever its state (signing out is harmless, so no CSRF value is asked for)."""
    gone = Cookie(key=SESSION_COOKIE, value="", path="/", max_age=0, httponly=True, samesite="strict")
    return Response(None, status_code=204, cookies=[gone])


def dashboard_routes() -> list[ControllerRouterHandler]:
    static = create_static_files_router(
        "/dashboard/static", [DASHBOARD_DIR], name="dashboard-static", include_in_schema=False
    )
    return [dashboard_page, sign_in, session_info, sign_out, static]
