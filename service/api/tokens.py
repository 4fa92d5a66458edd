"""`POST /v1/stream-tokens`, and the check that lets the two event streams (and nothing else) take `?token=`.

A browser's `EventSource` cannot send an `Authorization` header, so a backend asks for a short-lived, read-only
token and hands it to the page, which puts it in the stream's URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.handlers import BaseRouteHandler
from litestar.params import Body, QueryParameter

from service.api.body import require_json, strict
from service.api.context import AppContext, authenticate, context, key_record, spend_request
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY, text_param
from service.api.query import key_then_query, refuse_unknown_query
from service.errors import NotFound, Unauthorized
from service.timestamps import to_iso
from service.tokens import MAX_TOKEN_CHARS, MAX_TTL_SECONDS
from service.wire import MetadataKey, MetadataValue
from storage import ApiKeyRecord

MAX_TOKEN_METADATA = 10  # filter pairs a token may carry: it travels in a URL

TokenQuery = Annotated[
    str | None,
    QueryParameter(
        **text_param(
            "a stream token from `POST /v1/stream-tokens`, instead of an API key (for `EventSource`)",
            max_length=MAX_TOKEN_CHARS,
            # base64url and a dot: documented, so that no valid value can grow past the header limit (431) once
            # percent-encoded in the request line.
            pattern=r"^rst_[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
        )
    ),
]
# The OpenAPI security of the two event streams: an API key in a header, or a stream token in the query.
STREAM_SECURITY: list[dict[str, list[str]]] = [*SECURITY, {"streamToken": []}]


class StreamTokenCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_seconds: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_TTL_SECONDS, description="seconds until the token expires (at most an hour)")
    ]
    job_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1, max_length=100, description="only this job's events (another job's stream is 404)"
            ),
        ]
        | None
    ) = None
    metadata: (
        Annotated[
            dict[MetadataKey, MetadataValue],
            msgspec.Meta(
                max_length=MAX_TOKEN_METADATA,
                description="only events of jobs whose metadata holds every one of these pairs",
            ),
        ]
        | None
    ) = None


class StreamToken(msgspec.Struct, kw_only=True):
    token: Annotated[
        str, msgspec.Meta(description="pass as `?token=` to GET /v1/events or GET /v1/jobs/{id}/events; read-only")
    ]
    expires_at: Annotated[str, msgspec.Meta(description="ISO 8601; after this the token is refused (401)")]


_decode_create = msgspec.json.Decoder(StreamTokenCreate)


@post(
    "/v1/stream-tokens",
    status_code=201,
    dependencies={"caller": Provide(authenticate)},
    guards=[key_then_query],
    tags=["events"],
    summary="Create a stream token for a browser's EventSource",
    security=SECURITY,
    response_description="Created: the token and when it expires",
    responses=error_responses(
        400, 401, 404, 413, 415, 429, 503, described={404: "`job_id` is not a job of this API key"}
    ),
    operation_class=ApiOperation,
)
async def create_stream_token(
    request: Request[Any, Any, Any],
    data: Annotated[
        StreamTokenCreate, Body(media_type=RequestEncodingType.JSON, schema_extra={"additional_properties": False})
    ],
    caller: NamedDependency[ApiKeyRecord],
) -> Response[StreamToken]:
    """A read-only token for the caller's event streams, narrowed to one job and/or a metadata filter. It is
    accepted only as `?token=` by the two SSE endpoints, and refused once expired or once the key is revoked."""
    require_json(request)
    given = strict(_decode_create, await request.body())
    ctx = context(request)
    if given.job_id is not None:
        await ctx.gateway.get_job(caller.id, given.job_id)  # 404 for another key's job, as everywhere
    token, expires = ctx.stream_tokens.issue(caller.id, given.ttl_seconds, job_id=given.job_id, metadata=given.metadata)
    body = StreamToken(token=token, expires_at=to_iso(expires, "seconds"))
    return Response(body, status_code=201, media_type=MediaType.JSON)


@dataclass(frozen=True)
class StreamAccess:
    """Who opens an event stream, and what they may see: the key's events, narrowed by a token's job and metadata."""

    caller: ApiKeyRecord
    job_id: str | None = None
    metadata: dict[str, str] | None = None

    def check_job(self, job_id: str) -> None:
        """A token for another job sees this one as absent (404), as another key would."""
        if self.job_id is not None and self.job_id != job_id:
            raise NotFound(f"no job {job_id!r}")


async def stream_access(request: ASGIConnection[Any, Any, Any, Any]) -> StreamAccess:
    """`?token=` when given, else the API key headers; checked once per request (guard and dependency share it)."""
    state = request.scope.setdefault("state", {})
    known: StreamAccess | None = state.get("stream_access")
    if known is not None:
        return known
    token = request.query_params.get("token")
    if token is None:
        access = StreamAccess(await authenticate(request))
    else:
        ctx: AppContext = request.app.state.ctx
        claims = ctx.stream_tokens.verify(token)
        record = await key_record(ctx, claims.k)
        if record is None:
            raise Unauthorized("the stream token's API key is revoked", code="invalid_token")
        await spend_request(ctx, record.id)
        access = StreamAccess(record, claims.job, claims.md)
    state["stream_access"] = access
    return access


async def stream_then_query(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The guard of the event streams: the token or key, then the query, as `key_then_query` does for the rest."""
    await stream_access(connection)
    await refuse_unknown_query(connection, handler)
