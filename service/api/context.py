"""What request handlers reach through `app.state`: the use cases, the hub, and the API-key check with its cache."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request
from litestar.connection import ASGIConnection

from service.api.sessions import CSRF_HEADER, SESSION_COOKIE, Sessions, csrf_matches
from service.errors import Forbidden, RateLimited, Unauthorized
from service.ids import secret_matches, split_api_key
from storage import ApiKeyRecord, StorageError

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from litestar.handlers import BaseRouteHandler
    from prometheus_client import CollectorRegistry

    from service.api.limits import KeyLimits
    from service.assets import AssetStore, AssetUrls
    from service.endpoints import Endpoints
    from service.events import EventLog
    from service.gateway import Gateway
    from service.hub import EventHub
    from service.settings import Settings
    from service.tokens import StreamTokens

log = structlog.get_logger("reelay.keys")


@dataclass
class AppContext:
    """Built once by the lifespan; handlers ask the use cases (`gateway`, `events`, `endpoints`), never the store."""

    settings: Settings
    gateway: Gateway
    events: EventLog
    endpoints: Endpoints
    hub: EventHub
    registry: CollectorRegistry
    limits: KeyLimits  # per-key request rate and open streams
    rng: random.Random  # heartbeat jitter
    monotonic: Callable[[], float]  # the key cache's clock
    stream_tokens: StreamTokens  # signs and checks `?token=` grants to the event streams
    # key id -> (record, fetched at); revocation takes effect within `key_cache_seconds`.
    key_cache: dict[str, tuple[ApiKeyRecord, float]] = field(default_factory=dict)
    key_cache_seconds: float = 5.0
    # The archived outputs (None: REELAY_ASSETS=off), the signer of their URLs, and the wall clock that signs them.
    asset_store: AssetStore | None = None
    asset_urls: AssetUrls | None = None
    clock: Callable[[], float] = time.time
    sessions: Sessions | None = None  # the dashboard's session cookies (None: cookies are not accepted)


def context(request: Request[Any, Any, Any]) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard: unlike a dependency, it runs before Litestar reads the request body, so a caller without a valid key
    is answered 401 at once, whatever body it announces."""
    await authenticate(connection)


async def authenticate(request: ASGIConnection[Any, Any, Any, Any]) -> ApiKeyRecord:
    """The caller's API key, from `Authorization: Bearer <key>` or `x-api-key`, else from the dashboard's session
    cookie; checked once per request (the guard and the dependency share it, so a request spends one rate-limit
    token)."""
    state = request.scope.setdefault("state", {})
    known: ApiKeyRecord | None = state.get("api_key")
    if known is not None:
        return known
    ctx: AppContext = request.app.state.ctx
    raw = request.headers.get("x-api-key", "").strip()
    if not raw:  # absent or empty (as some proxies send it): the Authorization header decides
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        raw = value.strip() if scheme.lower() == "bearer" else ""
    secret: str | None = None
    if raw:
        parts = split_api_key(raw)
        if parts is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or x-api-key: <key>)")
        key_id, secret = parts
    else:
        key_id = session_key_id(request, ctx)
    record = await key_record(ctx, key_id)
    if record is None or (secret is not None and not secret_matches(secret, record.secret_hash)):
        raise Unauthorized("the API key is not valid")
    await spend_request(ctx, key_id)
    state["api_key"] = record
    return record


async def key_record(ctx: AppContext, key_id: str) -> ApiKeyRecord | None:
    """The key, unless unknown or revoked; read through the key cache, so a revocation shows within its window."""
    now = ctx.monotonic()
    cached = ctx.key_cache.get(key_id)
    if cached is not None and now - cached[1] < ctx.key_cache_seconds:
        record = cached[0]
    else:
        found = await ctx.gateway.api_key(key_id)
        if found is None:
            return None
        record = found
        if len(ctx.key_cache) > 10_000:
            ctx.key_cache.clear()
        ctx.key_cache[key_id] = (record, now)
    return None if record.revoked_at is not None else record


async def spend_request(ctx: AppContext, key_id: str) -> None:
    """One request of the key's rate budget, or RateLimited."""
    wait = await ctx.limits.take(key_id)
    if wait is not None:
        raise RateLimited(
            f"rate limit of {ctx.limits.rate:g} requests/s for this API key exceeded; retry later", retry_after=wait
        )


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_key_id(request: ASGIConnection[Any, Any, Any, Any], ctx: AppContext) -> str:
    """The key id of a request without a key: its dashboard session's, whose unsafe requests must carry the
    session's CSRF value (a cookie goes with any request; the header only with the dashboard's own scripts)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or ctx.sessions is None:
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or x-api-key: <key>)")
    session = ctx.sessions.read(cookie)
    if session is None:
        raise Unauthorized("the dashboard session has expired or is not valid; sign in again")
    method = request.scope.get("method", "GET")
    if method not in _SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER, "")):
        raise Forbidden(f"{method} with a session cookie needs the session's X-CSRF-Token header", code="csrf_failed")
    return session.key_id


async def close_revoked_streams(ctx: AppContext) -> None:
    """Every key-cache window, re-read the keys that hold open streams and end those revoked since.

    Another process (`reelay keys revoke`, another replica) may revoke a key, so this process must look itself.
    """
    while True:
        await asyncio.sleep(ctx.key_cache_seconds)
        for key_id in ctx.hub.stream_keys():
            try:
                record = await ctx.gateway.api_key(key_id)
            except StorageError as exc:
                log.warning("keys.revocation_check_failed", error=str(exc))
                break  # the next round tries again
            if record is None:
                ctx.key_cache.pop(key_id, None)
            else:
                ctx.key_cache[key_id] = (record, ctx.monotonic())  # later requests see the revocation at once
            if record is None or record.revoked_at is not None:
                log.info("keys.revoked_streams_closed", api_key_id=key_id, streams=ctx.hub.count_for(key_id))
                ctx.hub.close_key(key_id)
