"""`/v1/events`, and what every event stream's endpoint shares: the resume cursor, the event's documented shape,
and the opening of the stream (`/v1/jobs/{id}/events` uses it too)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter

from service.api.context import context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import text_param
from service.api.sse import EventStream, StreamSession
from service.api.tokens import STREAM_SECURITY, StreamAccess, TokenQuery, stream_access, stream_then_query
from service.errors import InvalidRequest, NotFound
from service.hub import metadata_holds
from service.vocabulary import EVENT_TYPES, TERMINAL, EventType

_EVENT_ID = {"pattern": r"^[0-9]{0,18}$", "max_length": 18}
LastEventIdQuery = Annotated[
    str | None,
    QueryParameter(**text_param("resume after this event id (same as the `Last-Event-ID` header)", **_EVENT_ID)),
]
LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        required=False,
        **text_param("resume exactly after this event id (wins over the query)", **_EVENT_ID),
    ),
]
_JOB_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "created_at", "job"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "created_at": {"type": "string", "format": "date-time"},
        "job": {"$ref": "#/components/schemas/Job"},
    },
}


class ServerSentEvent(msgspec.Struct):
    """One event of the stream, as an SSE client parses it (`id:`, `event:` and `data:` lines).

    Until OpenAPI 3.2's `itemSchema`, the schema of a `text/event-stream` body describes each event. The stream
    opens with a `retry:` line and is kept alive by `: ping` comments; neither is an event.
    """

    id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$", description="the event id to resume after")]
    event: EventType
    data: Annotated[
        str,
        msgspec.Meta(
            description='JSON: {"id", "type", "created_at", "job"}',
            extra_json_schema={
                "extra": {"content_media_type": "application/json", "content_schema": _JOB_EVENT_SCHEMA}
            },
        ),
    ]


def event_stream_spec(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ServerSentEvent,
        media_type="text/event-stream",
        description=description,
        generate_examples=False,
    )


SSE_ERRORS = {
    400: "`Last-Event-ID` is not an event id, or is newer than the newest event (`invalid_last_event_id`)",
    401: "Missing or invalid API key, or a stream token that is not valid (`invalid_token`) or has expired "
    "(`token_expired`)",
    429: "Too many requests, or too many open event streams for this API key (`too_many_streams`); "
    "retry after `Retry-After` seconds",
}


def cursor_param(request: Request[Any, Any, Any], header_value: str | None, query_value: str | None) -> int | None:
    """The header wins over the query; both are checked, so a malformed one is never silently ignored."""
    from_header, from_query = _event_id(header_value, "Last-Event-ID"), _event_id(query_value, "last_event_id")
    return from_header if from_header is not None else from_query


def _event_id(raw: str | None, field: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # str.isdigit() alone accepts "²"
        raise InvalidRequest("Last-Event-ID must be an event id (a non-negative integer)", details={"field": field})
    return int(raw)


@get(
    "/v1/events",
    dependencies={"access": Provide(stream_access)},
    guards=[stream_then_query],
    media_type="text/event-stream",
    tags=["events"],
    summary="Stream every event of the caller's jobs (SSE)",
    security=STREAM_SECURITY,
    responses={
        200: event_stream_spec("Events after the cursor, then live ones; the stream does not end"),
        **error_responses(400, 401, 429, 503, described=SSE_ERRORS),
    },
    operation_class=ApiOperation,
)
async def all_events(
    request: Request[Any, Any, Any],
    access: NamedDependency[StreamAccess],
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
    token: TokenQuery = None,
) -> EventStream:
    """Resumes exactly after `Last-Event-ID` (header) or `last_event_id` (query); without one, live only.
    With a stream token (`?token=`), only the events the token grants."""
    after = cursor_param(request, last_event_id_header, last_event_id)
    return await open_stream(request, access, access.job_id, after, whole_job=False)


@get(
    "/v1/jobs/{job_id:str}/events",
    dependencies={"access": Provide(stream_access)},
    guards=[stream_then_query],
    media_type="text/event-stream",
    tags=["jobs"],
    summary="Stream a job's events (SSE)",
    security=STREAM_SECURITY,
    responses={
        200: event_stream_spec("The job's past events, then live ones, up to its terminal event"),
        **error_responses(400, 401, 404, 429, 503, described=SSE_ERRORS),
    },
    operation_class=ApiOperation,
)
async def job_events(
    request: Request[Any, Any, Any],
    access: NamedDependency[StreamAccess],
    job_id: FromPath[str],
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
    token: TokenQuery = None,
) -> EventStream:
    """The job's past events, then live ones; the stream ends after the terminal event."""
    access.check_job(job_id)
    job = await context(request).gateway.get_job(access.caller.id, job_id)
    if access.metadata is not None and not metadata_holds(job.metadata, access.metadata):
        raise NotFound(f"no job {job_id!r}")  # outside the token's filter: as absent as another key's job
    after = cursor_param(request, last_event_id_header, last_event_id)
    return await open_stream(request, access, job_id, after, whole_job=True, job_finished=job.status in TERMINAL)


async def open_stream(
    request: Request[Any, Any, Any],
    access: StreamAccess,
    job_id: str | None,
    after: int | None,
    *,
    whole_job: bool,
    job_finished: bool = False,
) -> EventStream:
    ctx = context(request)
    settings = ctx.settings
    if after is not None:
        # Only ids above the newest committed one are refused: any id a client received is committed.
        newest = await ctx.events.newest_id()
        if after > newest:
            raise InvalidRequest(
                f"Last-Event-ID {after} is newer than the newest event ({newest}); reload from GET /v1/jobs",
                code="invalid_last_event_id",
                details={"last_event_id": after, "newest_event_id": newest},
            )
    return EventStream(
        StreamSession(
            events=ctx.events,
            hub=ctx.hub,
            api_key_id=access.caller.id,
            job_id=job_id,
            whole_job=whole_job,
            metadata=access.metadata,
            after_id=after,
            heartbeat=settings.sse_heartbeat_seconds,
            retry_ms=settings.sse_retry_ms,
            rng=ctx.rng,
            job_finished=job_finished,
        )
    )
