"""`/v1/jobs`, `/v1/events`, `/v1/models` and `/v1/usage`: thin handlers over the gateway."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from service.api.context import authenticate, context
from service.api.sse import EventStream, StreamSession
from service.errors import InvalidRequest, UnsupportedMediaType
from service.jobs import Job, JobCreate, JobList, encode_job
from service.providers.base import ModelSpec
from storage import ApiKeyRecord, JobFilter, UsageRow

_encode = msgspec.json.Encoder().encode
_META_PARAM = re.compile(r"^metadata\.([A-Za-z0-9_.\-]{1,40})$")
StatusFilter = Literal["queued", "processing", "succeeded", "failed", "cancelled"]


def _json(body: bytes, status: int = 200) -> Response[Any]:
    return Response(body, status_code=status, media_type=MediaType.JSON)


def _cursor_param(request: Request[Any, Any, Any], query_value: str | None) -> int | None:
    raw = request.headers.get("last-event-id") or query_value
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # str.isdigit() alone accepts "²"
        raise InvalidRequest(
            "Last-Event-ID must be an event id (a non-negative integer)", details={"field": "last_event_id"}
        )
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
            f"{key}: {message}", details=[{"key": key, "message": message, "source": "body"}]
        ) from None


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    dependencies = {"caller": Provide(authenticate)}
    security = [{"bearer": []}, {"apiKey": []}]

    @post("/", status_code=202, summary="Create a job")
    async def create_job(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[JobCreate],
        caller: NamedDependency[ApiKeyRecord],
        idempotency_key: Annotated[str | None, HeaderParameter(name="Idempotency-Key", required=False)] = None,
    ) -> Response[Job]:
        """Accept a job (202). With `Idempotency-Key`, a repeat of the same request returns the original
        job (200) and a different request with the same key is refused (409)."""
        # `data` is what Litestar validated leniently (and documents the body); the job is built from a strict pass.
        _require_json(request)
        job, created = await context(request).gateway.create_job(
            caller.id, _strict(await request.body()), idempotency_key
        )
        return _json(encode_job(job), 202 if created else 200)

    @get("/", summary="List jobs, newest first")
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        status: FromQuery[StatusFilter | None] = None,
        model: FromQuery[str | None] = None,
        provider: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: FromQuery[str | None] = None,
    ) -> Response[JobList]:
        """Filters combine; `metadata.<key>=<value>` filters on metadata. `next_cursor` pages on."""
        metadata = {}
        for name, value in request.query_params.items():
            if name.startswith("metadata."):
                match = _META_PARAM.match(name)
                if match is None:
                    raise InvalidRequest(
                        f"{name}: metadata keys are 1-40 of A-Z a-z 0-9 _ . -", details={"field": name}
                    )
                metadata[match.group(1)] = value
        filters = JobFilter(status=status, model=model, provider=provider, metadata=metadata)
        page, next_cursor = await context(request).gateway.list_jobs(caller.id, filters, limit, cursor)
        body = b'{"data":[' + b",".join(encode_job(j) for j in page) + b'],"next_cursor":' + _encode(next_cursor) + b"}"
        return _json(body)

    @get("/{job_id:str}", summary="Get a job")
    async def get_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        job = await context(request).gateway.get_job(caller.id, job_id)
        return _json(encode_job(job))

    @post("/{job_id:str}/cancel", status_code=200, summary="Cancel a job")
    async def cancel_job(
        self, request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: FromPath[str]
    ) -> Response[Job]:
        """Cancel a job that has not finished (409 if it has)."""
        job = await context(request).gateway.cancel_job(caller.id, job_id)
        return _json(encode_job(job))

    @get("/{job_id:str}/events", summary="Stream a job's events (SSE)", media_type="text/event-stream")
    async def job_events(
        self,
        request: Request[Any, Any, Any],
        caller: NamedDependency[ApiKeyRecord],
        job_id: FromPath[str],
        last_event_id: FromQuery[str | None] = None,
    ) -> EventStream:
        """The job's past events, then live ones; the stream ends after the terminal event."""
        ctx = context(request)
        await ctx.gateway.get_job(caller.id, job_id)
        return _stream(request, caller, job_id, _cursor_param(request, last_event_id))


@get(
    "/v1/events",
    dependencies={"caller": Provide(authenticate)},
    media_type="text/event-stream",
    tags=["events"],
    summary="Stream every event of the caller's jobs (SSE)",
    security=[{"bearer": []}, {"apiKey": []}],
)
async def all_events(
    request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], last_event_id: FromQuery[str | None] = None
) -> EventStream:
    """Resumes exactly after `Last-Event-ID` (header) or `last_event_id` (query); without one, live only."""
    return _stream(request, caller, None, _cursor_param(request, last_event_id))


def _stream(
    request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord], job_id: str | None, after: int | None
) -> EventStream:
    ctx = context(request)
    settings = ctx.settings
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
    capabilities = {
        "durations": list(spec.durations),
        "default_duration": spec.default_duration,
        "resolutions": list(spec.resolutions),
        "default_resolution": spec.default_resolution,
        "aspect_ratios": list(spec.aspect_ratios),
        "default_aspect_ratio": spec.default_aspect_ratio,
        "inputs": ["prompt", "duration", "resolution", "aspect_ratio", *spec.inputs, "provider_options"],
        "max_reference_images": spec.max_reference_images,
        "max_reference_videos": spec.max_reference_videos,
        "max_reference_audios": spec.max_reference_audios,
        "audio": spec.audio,
        "seed_range": None if spec.seed_range is None else {"min": spec.seed_range[0], "max": spec.seed_range[1]},
        "callbacks": spec.callbacks,
        "inputs_required": list(spec.required),
        "inputs_together": [list(g) for g in spec.together],
        "inputs_exclusive": [list(p) for p in spec.exclusive],
        "inputs_requiring": {field: list(needs) for field, needs in spec.requires},
        "inputs_urls_only": list(spec.urls_only),
    }
    return ModelInfo(
        id=spec.id,
        provider=spec.provider,
        available=available,
        capabilities=capabilities,
        price=None if spec.price is None else msgspec.to_builtins(spec.price),
    )


@get(
    "/v1/models",
    dependencies={"caller": Provide(authenticate)},
    tags=["models"],
    summary="Model ids, capabilities and prices",
    security=[{"bearer": []}, {"apiKey": []}],
)
async def list_models(request: Request[Any, Any, Any], caller: NamedDependency[ApiKeyRecord]) -> ModelList:
    gateway = context(request).gateway
    return ModelList(data=[model_info(spec, spec.provider in gateway.adapters) for spec in gateway.models.values()])


class UsageTotals(msgspec.Struct):
    jobs: int = 0
    credits_estimate: float = 0.0
    credits_charged: float = 0.0
    usd_estimate: float = 0.0
    usd_charged: float = 0.0
    by_status: dict[str, int] = msgspec.field(default_factory=dict)

    def add(self, row: UsageRow) -> None:
        self.jobs += row.jobs
        self.credits_estimate += row.credits_estimate
        self.credits_charged += row.credits_charged
        self.usd_estimate += row.usd_estimate
        self.usd_charged += row.usd_charged
        self.by_status[row.status] = self.by_status.get(row.status, 0) + row.jobs


class Usage(msgspec.Struct):
    range: dict[str, str | None]
    total: UsageTotals
    by_status: dict[str, int]
    by_model: dict[str, UsageTotals]
    by_day: dict[str, UsageTotals]


@get(
    "/v1/usage",
    dependencies={"caller": Provide(authenticate)},
    tags=["usage"],
    summary="Jobs and costs by status, by model and by day",
    security=[{"bearer": []}, {"apiKey": []}],
)
async def usage(
    request: Request[Any, Any, Any],
    caller: NamedDependency[ApiKeyRecord],
    start: FromQuery[str | None] = None,
    end: FromQuery[str | None] = None,
) -> Usage:
    """Jobs created in [`start`, `end`) (ISO 8601 dates or datetimes, UTC). Credits and USD are summed
    separately: estimates when the job was accepted, charges as the provider reported them."""
    start_iso, end_iso = _iso_param("start", start), _iso_param("end", end)
    total = UsageTotals()
    by_model: dict[str, UsageTotals] = {}
    by_day: dict[str, UsageTotals] = {}
    for row in await context(request).gateway.store.usage(caller.id, start_iso, end_iso):
        total.add(row)
        by_model.setdefault(row.model, UsageTotals()).add(row)
        by_day.setdefault(row.day, UsageTotals()).add(row)
    return Usage(
        range={"start": start_iso, "end": end_iso},
        total=total,
        by_status=dict(total.by_status),
        by_model=by_model,
        by_day=by_day,
    )


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
