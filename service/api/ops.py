"""Provider webhooks, health and readiness probes, and Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import structlog
from litestar import MediaType, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import FromPath, PathParameter
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reelay_signing import SignatureError
from service.api.context import context
from service.api.errors import error_responses
from service.errors import WebhookRejected
from service.providers import ADAPTERS

log = structlog.get_logger("reelay.webhooks")


WEBHOOK_RESULTS = ("applied", "duplicate", "stale", "ignored", "confirming")  # what Gateway.receive_webhook returns


class WebhookAck(msgspec.Struct):
    received: bool
    result: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"enum": list(WEBHOOK_RESULTS)}})]


@dataclass
class WebhookOperation(Operation):
    """Documents the body the handler reads raw (signatures are over the exact bytes, so Litestar must not parse it)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            description="The provider's own callback payload, verified on the raw bytes before it is read",
            required=True,
            content={MediaType.JSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))},
        )


Provider = Annotated[str, PathParameter(description="a provider name", schema_extra={"enum": sorted(ADAPTERS)})]
_WEBHOOK_RESPONSES = error_responses(
    400,
    401,
    404,
    413,
    503,
    described={
        400: "A signed body that cannot be read",
        404: "Unknown or unconfigured provider",
        401: "Bad, missing or expired signature, or a callback token that matches no job (`invalid_signature`)",
    },
)


async def _receive(
    request: Request[Any, Any, Any], provider: str, job_id: str | None, token: str | None
) -> Response[Any]:
    ctx = context(request)
    body = await request.body()  # capped by request_max_body_size (413 beyond it)
    metrics = request.app.state.metrics
    try:
        result = await ctx.gateway.receive_webhook(provider, request.headers, body, job_id=job_id, token=token)
    except SignatureError as exc:  # counted and logged here, answered by the one handler
        metrics.webhooks.labels(provider=provider, result="rejected").inc()
        log.warning("webhook.rejected", provider=provider, reason=exc.reason)
        raise
    except WebhookRejected as exc:
        metrics.webhooks.labels(provider=provider, result="unreadable").inc()
        log.warning("webhook.unreadable", provider=provider, error=str(exc))
        raise
    metrics.webhooks.labels(provider=provider, result=result).inc()
    return Response(WebhookAck(received=True, result=result), status_code=200)


@post(
    "/webhooks/{provider:str}",
    tags=["webhooks"],
    summary="Signed provider callback",
    status_code=200,
    responses=_WEBHOOK_RESPONSES,
    operation_class=WebhookOperation,
)
async def provider_webhook(request: Request[Any, Any, Any], provider: Provider) -> Response[WebhookAck]:
    """Verified on the raw body (401 with a reason code otherwise); redeliveries answer 200 and change nothing."""
    return await _receive(request, provider, None, None)


@post(
    "/webhooks/{provider:str}/{job_id:str}/{token:str}",
    tags=["webhooks"],
    summary="Per-job callback for providers that do not sign",
    status_code=200,
    responses=_WEBHOOK_RESPONSES,
    operation_class=WebhookOperation,
)
async def job_webhook(
    request: Request[Any, Any, Any], provider: Provider, job_id: FromPath[str], token: FromPath[str]
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
    responses={
        200: ResponseSpec(Health, description="Ready", generate_examples=False),
        **error_responses(503, described={503: "Not ready: `unavailable`, `schema_outdated` or `disk_full`"}),
    },
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    await context(request).gateway.check_ready()  # NotReady answers 503 with its code
    return Response(Health(status="ready"))


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type=MediaType.TEXT)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    ctx = context(request)
    request.app.state.metrics.sse_subscribers.set(ctx.hub.subscriber_count)
    # The exact header: given as a media type, Litestar would append a second charset to it.
    return Response(generate_latest(ctx.registry), headers={"content-type": CONTENT_TYPE_LATEST})
