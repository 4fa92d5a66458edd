"""Per-request context: a request id bound to every log line, one access-log line, metrics, and the deadline
for receiving the request body."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
from typing import TYPE_CHECKING

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from service.errors import ClientClosedRequest, RequestTimeout
from service.logging import redact_query

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

log = structlog.get_logger("reelay.http")
_PROCESS_TAG = os.urandom(4).hex()
_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# The dashboard's (service/api/dashboard.py): every file from Reelay, no inline script or style. Media may also be
# a provider's URL (the fallback when a job's video is not archived), which can be any host.
DASHBOARD_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' https: http:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Only the API docs page is HTML; it loads Swagger UI from Reelay itself. Everything else may load nothing.
_HTML_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; frame-ancestors 'none'"
)
_MAX_LOGGED_QUERY = 2000  # a log line stays readable; a cut can only drop a secret, never expose one
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# Unique within the process, and across replicas by the random prefix; no system call per request.
_REQUEST_IDS = (f"{_PROCESS_TAG}-{n:x}" for n in itertools.count(1))


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A before-send hook, so error pages and 404s carry the headers too."""
    if message["type"] == "http.response.start":
        dashboard = scope.get("path", "").startswith("/dashboard")
        message["headers"] = security_headers(list(message.get("headers", [])), DASHBOARD_CSP if dashboard else None)


def security_headers(headers: list[tuple[bytes, bytes]], csp: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """Headers every response carries; API answers are also never cached. `csp` overrides the policy."""
    names = {name.lower() for name, _ in headers}
    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    extra = [h for h in _COMMON_HEADERS if h[0] not in names]
    is_html = content_type.startswith(b"text/html")
    extra.append((b"content-security-policy", csp or (_HTML_CSP if is_html else _API_CSP)))
    if b"cache-control" not in names:
        extra.append((b"cache-control", b"no-store"))
    return [*headers, *extra]


class RequestContextMiddleware(ASGIMiddleware):
    """Also bounds how long a request body may take (408), and records a client that leaves mid-body as 499."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, body_timeout_seconds: float = 30.0) -> None:
        self.body_timeout_seconds = body_timeout_seconds

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = supplied if _SAFE_ID.match(supplied) else next(_REQUEST_IDS)
        started = time.perf_counter()
        status = 500
        body_pending = True  # until the last chunk of the request body has been received
        timeout = self.body_timeout_seconds
        # One timer per request that declares a body (an asyncio.timeout around each receive cost about a
        # quarter of POST /v1/jobs throughput): past the deadline, a receive still waiting for the body is
        # cancelled, and one not yet started fails at once.
        in_receive = False
        expired = False
        task = asyncio.current_task()
        timer = None
        if task is not None and _declares_body(scope):

            def expire() -> None:
                nonlocal expired
                if body_pending:
                    expired = True
                    if in_receive:
                        task.cancel()

            timer = asyncio.get_running_loop().call_later(timeout, expire)

        def timed_out() -> RequestTimeout:
            log.info("http.body_timeout", timeout=timeout)
            return RequestTimeout(f"the request body was not received within {timeout:g} s")

        async def receive_wrapper() -> ReceiveMessage:
            nonlocal body_pending, in_receive
            if not body_pending:
                return await receive()  # after the body, a receive waits for the disconnect: no deadline
            if expired:
                raise timed_out()
            in_receive = True
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not expired or task is None:
                    raise
                task.uncancel()
                raise timed_out() from None
            finally:
                in_receive = False
            if message["type"] == "http.disconnect":
                log.info("http.client_disconnected")
                raise ClientClosedRequest("the client closed the connection before sending the whole body")
            body_pending = bool(message.get("more_body", False))
            if not body_pending and timer is not None:
                timer.cancel()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if status == 408:  # a client too slow to send its body is not kept
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await next_app(scope, receive_wrapper, send_wrapper)
            finally:
                if timer is not None:
                    timer.cancel()
                elapsed = time.perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                metrics = scope["app"].state.metrics
                metrics.requests.labels(method=scope.get("method", ""), route=route, status=str(status)).inc()
                metrics.latency.labels(route=route).observe(elapsed)
                # Paths may carry secrets (per-job callback tokens): the log set-up redacts them, and query values here.
                query = redact_query(scope.get("query_string", b"")[:_MAX_LOGGED_QUERY].decode("latin-1"))
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    **({"query": query} if query else {}),
                    status=status,
                    ms=round(elapsed * 1000, 2),
                )


def _declares_body(scope: Scope) -> bool:
    """Whether the request announces a body: a Content-Length above 0, or a chunked one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False
