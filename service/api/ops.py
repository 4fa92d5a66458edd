"""Provider webhooks, health and readiness probes, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.api.context import context
from service.errors import ErrorResponse, error_response
from service.gateway import WebhookRejected
from service.signing import SignatureError
from storage import SchemaOutdated, StorageUnavailable

log = structlog.get_logger("reelay.webhooks")


class WebhookAck(msgspec.Struct):
    received: bool
    result: str


async def _receive(
    request: Request[Any, Any, Any], provider: str, job_id: str | None, token: str | None
) -> Response[Any]:
    ctx = context(request)
    body = await request.body()  # capped by request_max_body_size (413 beyond it)
    metrics = request.app.state.metrics
    try:
        result = await ctx.gateway.receive_webhook(provider, request.headers, body, job_id=job_id, token=token)
    except SignatureError as exc:
        metrics.webhooks.labels(provider=provider, result="rejected").inc()
        log.warning("webhook.rejected", provider=provider, reason=exc.reason)
        return error_response(401, "invalid_signature", exc.message, {"reason": exc.reason})
    except WebhookRejected as exc:
        metrics.webhooks.labels(provider=provider, result="unreadable").inc()
        log.warning("webhook.unreadable", provider=provider, error=str(exc))
        return error_response(400, "invalid_request", str(exc))
    metrics.webhooks.labels(provider=provider, result=result).inc()
    return Response(WebhookAck(received=True, result=result), status_code=200)


@post("/webhooks/{provider:str}", tags=["webhooks"], summary="Signed provider callback", status_code=200)
async def provider_webhook(request: Request[Any, Any, Any], provider: FromPath[str]) -> Response[WebhookAck]:
    """Verified on the raw body (401 with a reason code otherwise); redeliveries answer 200 and change nothing."""
    return await _receive(request, provider, None, None)


@post(
    "/webhooks/{provider:str}/{job_id:str}/{token:str}",
    tags=["webhooks"],
    summary="Per-job callback for providers that do not sign",
    status_code=200,
)
async def job_webhook(
    request: Request[Any, Any, Any], provider: FromPath[str], job_id: FromPath[str], token: FromPath[str]
) -> Response[WebhookAck]:
    """Authenticated by the unguessable token Reelay put in the callback URL."""
    return await _receive(request, provider, job_id, token)


class Health(msgspec.Struct):
    status: str


@get("/healthz", tags=["operations"], summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    tags=["operations"],
    summary="Readiness: database reachable, writable and schema current",
    responses={503: ResponseSpec(data_container=ErrorResponse, description="Not ready")},
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    try:
        await context(request).gateway.store.check()
    except SchemaOutdated as exc:
        return error_response(503, "schema_outdated", str(exc))
    except StorageUnavailable as exc:
        log.error("readyz.storage_unavailable", error=str(exc))
        return error_response(503, "unavailable", "the database is not reachable or not writable")
    return Response(Health(status="ready"))


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=MediaType.TEXT)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    ctx = context(request)
    request.app.state.metrics.sse_subscribers.set(ctx.hub.subscriber_count)
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)
