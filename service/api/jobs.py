"""`/v1/jobs`, `/v1/events`, `/v1/models` and `/v1/usage`: thin handlers over the gateway."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.openapi import ResponseSpec
from litestar.params import Body, FromPath, HeaderParameter, QueryParameter
from litestar.response import Stream

from service.api.context import authenticate, context, require_api_key
from service.api.query import QUERY_FAMILIES, refuse_unknown_query
from service.api.sse import EventStream, StreamSession
from service.capabilities import capability_record
from service.errors import ApiOperation, InvalidRequest, UnsupportedMediaType, error_responses, schema_details
from service.gateway import Gateway
from service.jobs import MAX_METADATA_KEYS, TERMINAL, Job, JobCreate, JobList, _doc, encode_job
from service.providers.base import ModelSpec
from storage import ApiKeyRecord, JobFilter, JobRecord, UsageRow
from storage.records import COST_FIELDS

_encode = msgspec.json.Encoder().encode
_LIST_CHUNK = 20  # jobs of a list page read and sent at a time
_META_PARAM = re.compile(r"^metadata\.([A-Za-z0-9_.\-]{1,40})$")
StatusFilter = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
_STATUSES: tuple[str, ...] = get_args(StatusFilter)
EventType = Literal["job.created", "job.submitted", "job.processing", "job.succeeded", "job.failed", "job.cancelled"]
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

# -- OpenAPI facts Litestar cannot derive from the signatures -------------------------------------------
# Query strings and headers are never JSON null: an optional parameter is documented as absent-or-string,
# with the constraints the handler enforces (a value outside them is a 400).


def _text(description: str, **schema: Any) -> dict[str, Any]:
    return {"description": description, "schema_extra": {"one_of": None, "type": "string", **schema}}


_EVENT_ID = {"pattern": r"^[0-9]{0,18}$", "max_length": 18}
OptionalText = Annotated[str | None, QueryParameter(**_text("exact match"))]
LastEventIdQuery = Annotated[
    str | None,
    QueryParameter(**_text("resume after this event id (same as the `Last-Event-ID` header)", **_EVENT_ID)),
]
LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        required=False,
        **_text("resume exactly after this event id (wins over the query)", **_EVENT_ID),
    ),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        **_text(
            "the same key with the same body returns the original job (200); with another body, 409",
            min_length=1,
            max_length=255,
            pattern=r"^[\x20-\x7E]+$",
        ),
    ),
]
_JOB_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "created_at", "job"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"type": "string", "enum": list(get_args(EventType))},
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


def _event_stream(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ServerSentEvent,
        media_type="text/event-stream",
        description=description,
        generate_examples=False,
    )


_SSE_ERRORS = {
    400: "`Last-Event-ID` is not an event id, or is newer than the newest event (`invalid_last_event_id`)",
    429: "Too many requests, or too many open event streams for this API key (`too_many_streams`); "
    "retry after `Retry-After` seconds",
}
_JOB_RESPONSES = error_responses(400, 401, 404, 429, 503)


def _json(body: bytes, status: int = 200) -> Response[Any]:
    return Response(body, status_code=status, media_type=MediaType.JSON)


def _cursor_param(request: Request[Any, Any, Any], header_value: str | None, query_value: str | None) -> int | None:
    """The header wins over the query; both are checked, so a malformed one is never silently ignored."""
    from_header, from_query = _event_id(header_value, "Last-Event-ID"), _event_id(query_value, "last_event_id")
    return from_header if from_header is not None else from_query


def _event_id(raw: str | None, field: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # str.isdigit() alone accepts "²"
        raise InvalidRequest("Last-Event-ID must be an event id (a non-negative integer)", details={"field": field})
    return int(raw)


def _require_json(request: Request[Any, Any, Any]) -> None:
    """A body declared as something other than JSON is refused, even when it happens to parse."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json", details={"field": "Content-Type"})


_decode_job_create = msgspec.json.Decoder(JobCreate).decode


def _strict(body: bytes) -> JobCreate:
    """Litestar converts bodies leniently ("5" -> 5, "true" -> True); the API's types are strict."""
    try:
        return _decode_job_create(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$")
        key = where.rstrip("`").lstrip(".") or "data"
        raise InvalidRequest(
            f"{key}: {message}", details=schema_details([{"key": key, "message": message, "source": "body"}])
        ) from None


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    dependencies = {"caller": Provide(authenticate)}
    guards = [require_api_key, refuse_unknown_query]  # the key is checked before a body or query is read
    security = SECURITY

    @post(
        "/",
        status_code=202,
        summary="Create a job",
        response_description="Accepted: the new job",
        responses={
            200: ResponseSpec(
                Job,
                description="A repeat of an earlier request with the same Idempotency-Key: the original job",
                generate_examples=False,
            ),
            **error_responses(
                400,
                401,
                409,
                413,
                415,
                429,
                503,
                described={409: "Idempotency-Key already used with a different body (`idempotency_conflict`)"},
            ),
        },
        operation_class=ApiOperation,
    )
    async def create_job(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[
            JobCreate, Body(media_type=RequestEncodingType.JSON, schema_extra={"additional_properties": False})
        ],
        caller: NamedDependency[ApiKeyRecord],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Job]:
        """Accept a job (202). With `Idempotency-Key`, a repeat of the same request returns the original
        job (200) and a different request with the same key is refused (409)."""
        # `data` is what Litestar validated leniently (and documents the body); the job is built from a strict pass.
        _require_json(request)
        job, created = await context(request).gateway.create_job(
            caller.id, _strict(await request.body()), idempotency_key
        )
        return _json(encode_job(job), 202 if created else 200)

    @get(
        "/",
        summary="List jobs, newest first",
        responses=error_responses(400, 401, 429, 503),
        operation_class=ApiOperation,
        opt={QUERY_FAMILIES: ("metadata.",)},
    )
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        # `str`, checked below: with `Literal[...] | None` Litestar would read `?status=null` as no filter at all.
        status: Annotated[str | None, QueryParameter(**_text("only jobs in this status", enum=list(_STATUSES)))] = None,
        model: OptionalText = None,
        provider: OptionalText = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100, description="page size")] = 20,
        cursor: Annotated[str | None, QueryParameter(**_text("a `next_cursor` this API returned"))] = None,
    ) -> Response[JobList]:
        """Filters combine; `metadata.<key>=<value>` filters on metadata (at most 50 such filters).
        `next_cursor` pages on."""
        if status is not None and status not in _STATUSES:
            raise InvalidRequest(
                f"status: {status!r} is not one of {', '.join(_STATUSES)}",
                details={"field": "status", "allowed": list(_STATUSES)},
            )
        metadata = {}
        for name, value in request.query_params.items():
            if name.startswith("metadata."):
                match = _META_PARAM.match(name)
                if match is None:
                    raise InvalidRequest(
                        f"{name}: metadata keys are 1-40 of A-Z a-z 0-9 _ . -", details={"field": name}
                    )
                metadata[match.group(1)] = value
        if len(metadata) > MAX_METADATA_KEYS:  # no job can match more (and each key is one more SQL term)
            raise InvalidRequest(
                f"metadata: at most {MAX_METADATA_KEYS} metadata.<key> filters (a job holds at most "
                f"{MAX_METADATA_KEYS} metadata keys), got {len(metadata)}",
                details={"field": "metadata", "max_filters": MAX_METADATA_KEYS},
            )
        filters = JobFilter(status=status, model=model, provider=provider, metadata=metadata)
        gateway = context(request).gateway
        # The first chunk is read before the headers go out, so a bad cursor or a database outage is still a 4xx/5xx.
        page, next_cursor = await gateway.list_jobs(caller.id, filters, min(limit, _LIST_CHUNK), cursor)
        chunks = _job_list(gateway, caller.id, filters, limit, page, next_cursor)
        return Stream(chunks, media_type=MediaType.JSON)  # type: ignore[return-value]  # documented as JobList

    @get("/{job_id:str}", summary="Get a job", responses=_JOB_RESPONSES, operation_class=ApiOperation)
    async def get_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        gateway = context(request).gateway
        job = await gateway.get_job(caller.id, job_id)
        return _json(encode_job(job, full_input=await gateway.full_input(job)))

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        summary="Cancel a job",
        responses={
            **_JOB_RESPONSES,
            **error_responses(409, described={409: "The job has succeeded or failed (`job_finished`)"}),
        },
        operation_class=ApiOperation,
    )
    async def cancel_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        """Cancel a job that has not finished. Cancelling a cancelled job again returns it (200); a job that
        succeeded or failed answers 409."""
        job = await context(request).gateway.cancel_job(caller.id, job_id)
        return _json(encode_job(job))

    @get(
        "/{job_id:str}/events",
        summary="Stream a job's events (SSE)",
        media_type="text/event-stream",
        responses={
            200: _event_stream("The job's past events, then live ones, up to its terminal event"),
            **_JOB_RESPONSES,
            **error_responses(400, 429, described=_SSE_ERRORS),
        },
        operation_class=ApiOperation,
    )
    async def job_events(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        job_id: FromPath[str],
        last_event_id: LastEventIdQuery = None,
        last_event_id_header: LastEventIdHeader = None,
    ) -> EventStream:
        """The job's past events, then live ones; the stream ends after the terminal event."""
        job = await context(request).gateway.get_job(caller.id, job_id)
        after = _cursor_param(request, last_event_id_header, last_event_id)
        return await _stream(request, caller, job_id, after, job_finished=job.status in TERMINAL)


async def _job_list(
    gateway: Gateway, api_key_id: str, filters: JobFilter, limit: int, page: list[JobRecord], next_cursor: str | None
) -> AsyncIterator[bytes]:
    """A list page as `{"data": [...], "next_cursor": ...}`, read and sent `_LIST_CHUNK` jobs at a time: the next
    chunk is read only once the server took the previous one, so a client that stops reading holds one chunk."""
    yield b'{"data":['
    sent = 0
    while True:
        if page:
            yield (b"," if sent else b"") + b",".join(encode_job(j) for j in page)
        sent += len(page)
        if next_cursor is None or sent >= limit:
            break
        page, next_cursor = await gateway.list_jobs(api_key_id, filters, min(limit - sent, _LIST_CHUNK), next_cursor)
    yield b'],"next_cursor":' + _encode(next_cursor) + b"}"


@get(
    "/v1/events",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    media_type="text/event-stream",
    tags=["events"],
    summary="Stream every event of the caller's jobs (SSE)",
    security=SECURITY,
    responses={
        200: _event_stream("Events after the cursor, then live ones; the stream does not end"),
        **error_responses(400, 401, 429, 503, described=_SSE_ERRORS),
    },
    operation_class=ApiOperation,
)
async def all_events(
    request: Request[Any, Any, Any],
    caller: NamedDependency[ApiKeyRecord],
    last_event_id: LastEventIdQuery = None,
    last_event_id_header: LastEventIdHeader = None,
) -> EventStream:
    """Resumes exactly after `Last-Event-ID` (header) or `last_event_id` (query); without one, live only."""
    return await _stream(request, caller, None, _cursor_param(request, last_event_id_header, last_event_id))


async def _stream(
    request: Request[Any, Any, Any],
    caller: NamedDependency[ApiKeyRecord],
    job_id: str | None,
    after: int | None,
    *,
    job_finished: bool = False,
) -> EventStream:
    ctx = context(request)
    settings = ctx.settings
    if after is not None:
        # Only ids above the newest committed one are refused: any id a client received is committed.
        newest = await ctx.gateway.store.last_event_id()
        if after > newest:
            raise InvalidRequest(
                f"Last-Event-ID {after} is newer than the newest event ({newest}); reload from GET /v1/jobs",
                code="invalid_last_event_id",
                details={"last_event_id": after, "newest_event_id": newest},
            )
    return EventStream(
        StreamSession(
            store=ctx.gateway.store,
            hub=ctx.hub,
            api_key_id=caller.id,
            job_id=job_id,
            after_id=after,
            heartbeat=settings.sse_heartbeat_seconds,
            retry_ms=settings.sse_retry_ms,
            rng=ctx.gateway.rng,
            job_finished=job_finished,
        )
    )


class ModelInfo(msgspec.Struct):
    id: str
    provider: str
    available: bool
    capabilities: dict[str, Any]
    price: dict[str, Any] | None


class ModelList(msgspec.Struct):
    data: list[ModelInfo]


def model_info(spec: ModelSpec, available: bool) -> ModelInfo:
    return ModelInfo(
        id=spec.id,
        provider=spec.provider,
        available=available,
        capabilities=capability_record(spec),
        price=None if spec.price is None else msgspec.to_builtins(spec.price),
    )


@get(
    "/v1/models",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    tags=["models"],
    summary="Model ids, capabilities and prices",
    security=SECURITY,
    responses=error_responses(400, 401, 429, 503),
    operation_class=ApiOperation,
)
async def list_models(request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]) -> ModelList:
    gateway = context(request).gateway
    return ModelList(data=[model_info(spec, spec.provider in gateway.adapters) for spec in gateway.models.values()])


# Litestar documents Decimal as a string; these are sent as numbers (see _encode_money).
Money = Annotated[
    Decimal | None,
    _doc("an exact decimal sum; null when no job of the group has this figure", one_of=None, type=["number", "null"]),
]


class UsageTotals(msgspec.Struct):
    jobs: int = 0
    credits_estimate: Money = None
    credits_charged: Money = None
    usd_estimate: Money = None
    usd_charged: Money = None
    jobs_without: Annotated[
        dict[str, int],
        msgspec.Meta(
            description="per figure: the jobs that lack it (no published price, or not charged yet), left out of "
            "its sum"
        ),
    ] = msgspec.field(default_factory=lambda: dict.fromkeys(COST_FIELDS, 0))
    by_status: dict[str, int] = msgspec.field(default_factory=dict)

    def add(self, row: UsageRow) -> None:
        self.jobs += row.jobs
        for field in COST_FIELDS:
            value: Decimal | None = getattr(row, field)
            if value is not None:
                total: Decimal | None = getattr(self, field)
                setattr(self, field, value if total is None else total + value)
            self.jobs_without[field] += row.without[field]
        self.by_status[row.status] = self.by_status.get(row.status, 0) + row.jobs


class UsageRange(msgspec.Struct):
    start: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"format": "date-time"}})] | None
    end: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"format": "date-time"}})] | None


class Usage(msgspec.Struct):
    range: UsageRange
    total: UsageTotals
    by_status: dict[str, int]
    by_model: dict[str, UsageTotals]
    by_day: dict[str, UsageTotals]


# Money leaves as JSON numbers with the exact decimal digits (Litestar's encoder would write strings).
_encode_money = msgspec.json.Encoder(decimal_format="number").encode


@get(
    "/v1/usage",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    tags=["usage"],
    summary="Jobs and costs by status, by model and by day",
    security=SECURITY,
    responses=error_responses(400, 401, 429, 503),
    operation_class=ApiOperation,
)
async def usage(
    request: Request[Any, Any, Any],
    caller: NamedDependency[ApiKeyRecord],
    start: Annotated[
        str | None,
        QueryParameter(**_text("ISO 8601 date or datetime (UTC if no offset), inclusive: jobs created at or after it")),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            **_text(
                "ISO 8601 date or datetime (UTC if no offset), exclusive: jobs created before it. A date is its "
                "midnight UTC, so `end=2025-07-01` ends with June 30; must be after `start`"
            )
        ),
    ] = None,
) -> Response[Usage]:
    """Jobs created in [`start`, `end`): `start` inclusive, `end` exclusive (ISO 8601 dates or datetimes, UTC).
    Credits and USD are summed separately and exactly: estimates when the job was accepted, charges as the
    provider reported them. A sum is null when no job of the group has that figure, and `jobs_without` counts the
    jobs each sum leaves out."""
    start_iso, end_iso = _iso_param("start", start), _iso_param("end", end)
    if start_iso is not None and end_iso is not None and end_iso <= start_iso:
        raise InvalidRequest(
            f"start ({start_iso}) must be before end ({end_iso}); end is exclusive",
            details={"fields": ["start", "end"], "start": start_iso, "end": end_iso},
        )
    total = UsageTotals()
    by_model: dict[str, UsageTotals] = {}
    by_day: dict[str, UsageTotals] = {}
    for row in await context(request).gateway.store.usage(caller.id, start_iso, end_iso):
        total.add(row)
        by_model.setdefault(row.model, UsageTotals()).add(row)
        by_day.setdefault(row.day, UsageTotals()).add(row)
    report = Usage(
        range=UsageRange(start=start_iso, end=end_iso),
        total=total,
        by_status=dict(total.by_status),
        by_model=by_model,
        by_day=by_day,
    )
    return _json(_encode_money(report))


def _iso_param(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        utc = parsed.astimezone(UTC)  # OverflowError for 9999-12-31T23:59-23:59 and 0001-01-01T00:00+01:00
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{name}: not an ISO 8601 date or datetime", details={"field": name}) from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
