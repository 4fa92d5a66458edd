"""Caller webhooks: the key's signing secret, `/v1/webhook-endpoints` and the attempt log (deliveries, test, resend,
recover); thin handlers over `Endpoints`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter

from service.api.body import require_json, strict
from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY, text_param
from service.api.query import key_then_query
from service.endpoints import RECOVER_MAX_DAYS
from service.errors import InvalidRequest
from service.timestamps import to_iso
from service.vocabulary import EVENT_TYPES
from service.wire import schema_doc
from storage import ApiKeyRecord, DeliveryStatus, DeliveryView, EndpointChange, EndpointRecord, SigningSecret

MAX_EVENTS = 20  # event types one endpoint lists (there are fewer known types; repeats are dropped)
_Timestamp = Annotated[str, schema_doc(format="date-time")]
WebhookUrl = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2048,
        pattern=r"^[^\x00-\x20\x7f]+$",
        description="an https:// or http:// URL on a public host (a private one with REELAY_WEBHOOK_ALLOW_PRIVATE)",
        examples=["https://example.com/reelay-webhooks"],
    ),
]
EventList = Annotated[
    list[str],
    msgspec.Meta(min_length=1, max_length=MAX_EVENTS),
    schema_doc(
        'the event types to receive, or ["*"] for every type',
        items={"type": "string", "enum": [*EVENT_TYPES, "*"]},
    ),
]
Description = Annotated[str, msgspec.Meta(max_length=500, pattern="^[^\x00]*$", description="for you; never sent")]
_NO_EXTRA = {"additional_properties": False}


# -- requests ------------------------------------------------------------------------------------------------


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: WebhookUrl
    events: EventList = msgspec.field(default_factory=lambda: ["*"])
    description: Description = ""


class EndpointPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Absent (or null) fields stay as they are. Disabling fails the endpoint's pending deliveries; enabling lets
    new ones through again (recover the failed ones with `POST …/recover`)."""

    url: WebhookUrl | None = None
    events: EventList | None = None
    description: Description | None = None
    disabled: bool | None = None


_Instant = Annotated[str, msgspec.Meta(min_length=1, max_length=64), schema_doc(format="date-time")]


class RecoverRange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    since: Annotated[_Instant, msgspec.Meta(description="ISO 8601 (UTC if no offset), inclusive")]
    until: Annotated[
        _Instant,
        msgspec.Meta(
            description=f"ISO 8601 (UTC if no offset), exclusive; at most {RECOVER_MAX_DAYS} days after since"
        ),
    ]


_decode_create = msgspec.json.Decoder(EndpointCreate)
_decode_patch = msgspec.json.Decoder(EndpointPatch)
_decode_recover = msgspec.json.Decoder(RecoverRange)


# -- answers -------------------------------------------------------------------------------------------------


class WebhookSecret(msgspec.Struct, kw_only=True):
    secret: Annotated[str, msgspec.Meta(description="`whsec_…`: verify deliveries to per-job `webhook_url`s with it")]
    previous_secret_expires_at: Annotated[
        _Timestamp | None, msgspec.Meta(description="until then, the replaced secret also signs (a second signature)")
    ]


class WebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    url: str
    events: list[str]
    description: str
    disabled: bool
    disabled_reason: Annotated[
        str | None,
        schema_doc(
            '"gone" (answered 410), "failing" (failed for days), "by_request", or null',
            one_of=None,
            type=["string", "null"],
            enum=["gone", "failing", "by_request", None],
        ),
    ]
    created_at: _Timestamp
    updated_at: _Timestamp


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    secret: Annotated[str, msgspec.Meta(description="`whsec_…`: shown here only (on create and on rotate-secret)")]


class WebhookEndpointList(msgspec.Struct):
    data: list[WebhookEndpoint]


class DeliveryAttempt(msgspec.Struct, kw_only=True):
    attempted_at: _Timestamp
    duration_ms: float
    status_code: Annotated[int | None, msgspec.Meta(description="null when no HTTP answer came")]
    response_body: Annotated[str | None, msgspec.Meta(description="the first 1 KB of the answer's body")]
    error: Annotated[str | None, msgspec.Meta(description="what went wrong (timeout, TLS, refused, redirect…)")]


class Delivery(msgspec.Struct, kw_only=True):
    id: Annotated[str, msgspec.Meta(description="the `webhook-id` header of every attempt: dedupe on it")]
    job_id: str | None
    endpoint_id: Annotated[str | None, msgspec.Meta(description="null for a job's own `webhook_url`")]
    url: str
    event_type: str
    event_id: int | None
    status: Annotated[str, schema_doc(enum=list(DeliveryStatus.ALL))]
    attempts_count: int
    next_attempt_at: _Timestamp | None
    last_status: int | None
    created_at: _Timestamp
    updated_at: _Timestamp
    attempts: Annotated[list[DeliveryAttempt], msgspec.Meta(description="oldest first")]


class DeliveryList(msgspec.Struct):
    data: list[Delivery]
    next_cursor: Annotated[str, schema_doc("pass as `cursor` for the next page; null on the last page")] | None


class JobDeliveries(msgspec.Struct):
    data: list[Delivery]


class Recovered(msgspec.Struct):
    resent: Annotated[int, msgspec.Meta(description="the failed deliveries made pending again")]


def secret_view(signing: SigningSecret, now: float) -> WebhookSecret:
    overlap = signing.previous_expires_at if len(signing.signing(now)) > 1 else None
    return WebhookSecret(secret=signing.secret, previous_secret_expires_at=None if overlap is None else to_iso(overlap))


def endpoint_view(e: EndpointRecord) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=e.id,
        url=e.url,
        events=e.events,
        description=e.description,
        disabled=e.disabled,
        disabled_reason=e.disabled_reason,
        created_at=e.created_at,
        updated_at=e.updated_at,
    )


def with_secret(e: EndpointRecord) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**msgspec.structs.asdict(endpoint_view(e)), secret=e.signing.secret)


def delivery_view(view: DeliveryView) -> Delivery:
    d = view.delivery
    return Delivery(
        id=d.id,
        job_id=d.job_id,
        endpoint_id=d.endpoint_id,
        url=d.url,
        event_type=d.event_type,
        event_id=d.event_id,
        status=d.status,
        attempts_count=d.attempts,
        next_attempt_at=None if d.next_attempt_at is None else to_iso(d.next_attempt_at),
        last_status=d.last_status,
        created_at=d.created_at,
        updated_at=d.updated_at,
        attempts=[
            DeliveryAttempt(
                attempted_at=a.attempted_at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                response_body=a.response_body,
                error=a.error,
            )
            for a in view.attempts
        ],
    )


def _answer(content: Any, status: int = 200) -> Response[Any]:
    return Response(content, status_code=status, media_type=MediaType.JSON)


_ENDPOINT_404 = {404: "No such webhook endpoint for this API key"}
_DISABLED_409 = "The endpoint is disabled (`endpoint_disabled`)"
_BAD_URL = (
    "Invalid request; a URL Reelay will not send to is `invalid_webhook_url`, with its `reason` in details "
    "(a private, loopback or reserved host, a scheme other than http(s))"
)
_ERRORS = (401, 429, 503)


class WebhookController(Controller):
    path = "/v1"
    tags = ["webhooks"]
    dependencies = {"caller": Provide(authenticate)}
    guards = [key_then_query]
    security = SECURITY

    # -- the key's secret ------------------------------------------------------------------------

    @get(
        "/webhook-secret",
        summary="Get the key's webhook signing secret",
        responses=error_responses(400, *_ERRORS),
        operation_class=ApiOperation,
    )
    async def get_secret(self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]) -> WebhookSecret:
        """The secret that signs deliveries to the `webhook_url` of this key's jobs (made on first use). Each
        endpoint has a secret of its own."""
        ctx = context(request)
        return secret_view(await ctx.endpoints.secret(caller.id), ctx.endpoints.now())

    @post(
        "/webhook-secret/rotate",
        status_code=200,
        summary="Rotate the key's webhook signing secret",
        responses=error_responses(400, *_ERRORS),
        operation_class=ApiOperation,
    )
    async def rotate_secret(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]
    ) -> WebhookSecret:
        """A new secret; the one it replaces keeps signing beside it (a second `v1,` signature) until
        `previous_secret_expires_at`, 24 h by default."""
        ctx = context(request)
        return secret_view(await ctx.endpoints.rotate_secret(caller.id), ctx.endpoints.now())

    # -- endpoints -------------------------------------------------------------------------------

    @post(
        "/webhook-endpoints",
        status_code=201,
        summary="Create a webhook endpoint",
        response_description="Created: the endpoint with its secret, shown this once",
        responses=error_responses(
            400,
            409,
            413,
            415,
            *_ERRORS,
            described={
                400: _BAD_URL,
                409: "The key has `REELAY_WEBHOOK_MAX_ENDPOINTS` endpoints already (`too_many_endpoints`)",
            },
        ),
        operation_class=ApiOperation,
    )
    async def create_endpoint(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EndpointCreate, Body(media_type=RequestEncodingType.JSON, schema_extra=_NO_EXTRA)],
        caller: NamedDependency[ApiKeyRecord],
    ) -> Response[WebhookEndpointWithSecret]:
        """Every event of this key's jobs whose type `events` lists is delivered to `url`, signed with the
        endpoint's own secret (returned here only)."""
        require_json(request)
        given = strict(_decode_create, await request.body())
        endpoint = await context(request).endpoints.create(caller.id, given.url, given.events, given.description)
        return _answer(with_secret(endpoint), 201)

    @get(
        "/webhook-endpoints",
        summary="List the key's webhook endpoints, oldest first",
        responses=error_responses(400, *_ERRORS),
        operation_class=ApiOperation,
    )
    async def list_endpoints(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]
    ) -> WebhookEndpointList:
        found = await context(request).endpoints.list_endpoints(caller.id)
        return WebhookEndpointList(data=[endpoint_view(e) for e in found])

    @get(
        "/webhook-endpoints/{endpoint_id:str}",
        summary="Get a webhook endpoint",
        responses=error_responses(400, 404, *_ERRORS, described=_ENDPOINT_404),
        operation_class=ApiOperation,
    )
    async def get_endpoint(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], endpoint_id: FromPath[str]
    ) -> WebhookEndpoint:
        return endpoint_view(await context(request).endpoints.get(caller.id, endpoint_id))

    @patch(
        "/webhook-endpoints/{endpoint_id:str}",
        summary="Change a webhook endpoint",
        responses=error_responses(400, 404, 413, 415, *_ERRORS, described={**_ENDPOINT_404, 400: _BAD_URL}),
        operation_class=ApiOperation,
    )
    async def patch_endpoint(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[EndpointPatch, Body(media_type=RequestEncodingType.JSON, schema_extra=_NO_EXTRA)],
        caller: NamedDependency[ApiKeyRecord],
        endpoint_id: FromPath[str],
    ) -> WebhookEndpoint:
        """Change its `url` (checked again), `events`, `description`, or `disabled`. Disabling fails its pending
        deliveries; enabling clears `disabled_reason`."""
        require_json(request)
        given = strict(_decode_patch, await request.body())
        change = EndpointChange(
            url=given.url, events=given.events, description=given.description, disabled=given.disabled
        )
        return endpoint_view(await context(request).endpoints.update(caller.id, endpoint_id, change))

    @delete(
        "/webhook-endpoints/{endpoint_id:str}",
        status_code=204,
        summary="Delete a webhook endpoint",
        responses=error_responses(400, 404, *_ERRORS, described=_ENDPOINT_404),
        operation_class=ApiOperation,
    )
    async def delete_endpoint(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], endpoint_id: FromPath[str]
    ) -> None:
        """Its pending deliveries fail; its deliveries and their attempts stay readable from their jobs."""
        await context(request).endpoints.delete(caller.id, endpoint_id)

    @post(
        "/webhook-endpoints/{endpoint_id:str}/rotate-secret",
        status_code=200,
        summary="Rotate a webhook endpoint's secret",
        response_description="The endpoint with its new secret, shown this once",
        responses=error_responses(400, 404, *_ERRORS, described=_ENDPOINT_404),
        operation_class=ApiOperation,
    )
    async def rotate_endpoint_secret(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], endpoint_id: FromPath[str]
    ) -> WebhookEndpointWithSecret:
        """A new secret; the replaced one keeps signing beside it for 24 h by default (two `v1,` signatures)."""
        return with_secret(await context(request).endpoints.rotate_endpoint_secret(caller.id, endpoint_id))

    @post(
        "/webhook-endpoints/{endpoint_id:str}/test",
        status_code=202,
        summary="Send a webhook.test delivery to an endpoint",
        response_description="Accepted: the pending delivery; its attempts show in the endpoint's deliveries",
        responses=error_responses(400, 404, 409, *_ERRORS, described={**_ENDPOINT_404, 409: _DISABLED_409}),
        operation_class=ApiOperation,
    )
    async def test_endpoint(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], endpoint_id: FromPath[str]
    ) -> Response[Delivery]:
        """A `webhook.test` delivery, whatever the endpoint's `events`: `{"endpoint_id", "message"}` as `data`."""
        view = await context(request).endpoints.send_test(caller.id, endpoint_id)
        return _answer(delivery_view(view), 202)

    @get(
        "/webhook-endpoints/{endpoint_id:str}/deliveries",
        summary="List an endpoint's deliveries with their attempts, newest first",
        responses=error_responses(400, 404, *_ERRORS, described=_ENDPOINT_404),
        operation_class=ApiOperation,
    )
    async def endpoint_deliveries(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        endpoint_id: FromPath[str],
        # `str`, checked below: with `Literal[...] | None` Litestar would read `?status=null` as no filter at all.
        status: Annotated[
            str | None, QueryParameter(**text_param("only deliveries in this status", enum=list(DeliveryStatus.ALL)))
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="page size")] = 20,
        cursor: Annotated[str | None, QueryParameter(**text_param("a `next_cursor` this API returned"))] = None,
    ) -> DeliveryList:
        if status is not None and status not in DeliveryStatus.ALL:
            raise InvalidRequest(
                f"status: {status!r} is not one of {', '.join(DeliveryStatus.ALL)}",
                details={"field": "status", "allowed": list(DeliveryStatus.ALL)},
            )
        page, next_cursor = await context(request).endpoints.endpoint_deliveries(
            caller.id, endpoint_id, status, limit, cursor
        )
        return DeliveryList(data=[delivery_view(v) for v in page], next_cursor=next_cursor)

    @post(
        "/webhook-endpoints/{endpoint_id:str}/recover",
        status_code=202,
        summary="Resend an endpoint's failed deliveries created in a time range",
        responses=error_responses(400, 404, 409, 413, 415, *_ERRORS, described={**_ENDPOINT_404, 409: _DISABLED_409}),
        operation_class=ApiOperation,
    )
    async def recover(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[RecoverRange, Body(media_type=RequestEncodingType.JSON, schema_extra=_NO_EXTRA)],
        caller: NamedDependency[ApiKeyRecord],
        endpoint_id: FromPath[str],
    ) -> Response[Recovered]:
        """Every failed delivery of the endpoint created in [`since`, `until`) is sent again, now, with its id
        and a fresh retry schedule."""
        require_json(request)
        given = strict(_decode_recover, await request.body())
        resent = await context(request).endpoints.recover(caller.id, endpoint_id, given.since, given.until)
        return _answer(Recovered(resent=resent), 202)

    # -- a job's deliveries, one delivery ----------------------------------------------------------

    @get(
        "/jobs/{job_id:str}/deliveries",
        summary="List a job's deliveries with their attempts, oldest first",
        responses=error_responses(400, 404, *_ERRORS),
        operation_class=ApiOperation,
    )
    async def job_deliveries(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> JobDeliveries:
        """To its `webhook_url` and to every endpoint whose `events` matched, for each of its events."""
        found = await context(request).endpoints.job_deliveries(caller.id, job_id)
        return JobDeliveries(data=[delivery_view(v) for v in found])

    @post(
        "/deliveries/{delivery_id:str}/resend",
        status_code=202,
        summary="Send a delivery again",
        response_description="Accepted: the delivery, pending again, with the same id",
        responses=error_responses(
            400,
            404,
            409,
            *_ERRORS,
            described={
                404: "No such delivery for this API key",
                409: "Its endpoint is disabled (`endpoint_disabled`) or deleted (`endpoint_deleted`)",
            },
        ),
        operation_class=ApiOperation,
    )
    async def resend(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], delivery_id: FromPath[str]
    ) -> Response[Delivery]:
        """Whatever its status: sent again now, with the same id (the `webhook-id` receivers dedupe on) and a
        fresh retry schedule; its earlier attempts stay in its log."""
        view = await context(request).endpoints.resend(caller.id, delivery_id)
        return _answer(delivery_view(view), 202)
