"""Jobs: the wire shapes, and the state machine that decides every change (pure, clock passed in).

A job's stage only moves forward (queued → submitted → processing → terminal) and a terminal
status is final; each accepted change names the event that the store logs in the same transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from service.inline import shown_input
from storage import DispatchState, JobRecord, Stage

Status = Literal["queued", "processing", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
_STAGE_OF: dict[str, Stage] = {
    "queued": Stage.SUBMITTED,
    "processing": Stage.PROCESSING,
    "succeeded": Stage.TERMINAL,
    "failed": Stage.TERMINAL,
    "cancelled": Stage.TERMINAL,
}

# A job holds at most this many metadata pairs, so a list request filters on at most as many keys.
MAX_METADATA_KEYS = 50
MetadataKey = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.\-]+$")]
# No NUL: PostgreSQL's jsonb (which filters metadata) cannot store it.
MetadataValue = Annotated[str, msgspec.Meta(max_length=500, pattern="^[^\x00]*$")]
Url = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=10_000_000, description="an https:// or http:// URL to a public host, or a data: URI"
    ),
]

PROMPT_MAX_CHARS = 5000  # a model's provider may allow fewer (its `max_prompt_chars`)
# The public values of the normalized enums; each model accepts a subset (GET /v1/models), anything else is a 400.
RESOLUTIONS = ("480p", "720p", "1080p")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21", "adaptive")


def _doc(description: str | None = None, **schema: Any) -> msgspec.Meta:
    """OpenAPI-only facts for a field (Litestar applies `extra` to the field's schema; msgspec ignores it).

    For what Litestar cannot derive from the type: additionalProperties, formats, enums checked per model.
    """
    extra: dict[str, Any] = {"extra": schema}
    if description is not None:
        extra["description"] = description
    return msgspec.Meta(extra_json_schema=extra)


_URL_ITEMS = {"type": "string", "minLength": 1, "maxLength": 10_000_000}
_Timestamp = Annotated[str, _doc(format="date-time")]


class JobInput(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Normalized generation input; each adapter maps it to its provider's own names."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_MAX_CHARS)]
    duration: Annotated[int, _doc("seconds; the model's `durations` (GET /v1/models)")] | None = None
    resolution: Annotated[str, _doc("one of the model's `resolutions`", enum=[*RESOLUTIONS, None])] | None = None
    aspect_ratio: Annotated[str, _doc("one of the model's `aspect_ratios`", enum=[*ASPECT_RATIOS, None])] | None = None
    generate_audio: bool | None = None
    seed: Annotated[int, _doc("within the model's `seed_range`")] | None = None
    negative_prompt: Annotated[str, msgspec.Meta(max_length=5000)] | None = None
    camera_fixed: bool | None = None
    watermark: bool | None = None
    return_last_frame: bool | None = None
    first_frame: Url | None = None
    last_frame: Url | None = None
    reference_images: Annotated[list[Url], msgspec.Meta(max_length=16), _doc(items=_URL_ITEMS)] | None = None
    reference_videos: Annotated[list[Url], msgspec.Meta(max_length=16), _doc(items=_URL_ITEMS)] | None = None
    reference_audios: Annotated[list[Url], msgspec.Meta(max_length=16), _doc(items=_URL_ITEMS)] | None = None
    provider_options: (
        Annotated[
            dict[str, Any],
            _doc("provider-only fields the model passes through: its `provider_options` in GET /v1/models"),
        ]
        | None
    ) = None


class JobCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["seedancee2/pro"])]
    input: Annotated[JobInput, _doc(additional_properties=False)]
    metadata: Annotated[
        dict[MetadataKey, MetadataValue],
        msgspec.Meta(max_length=MAX_METADATA_KEYS),
        _doc(
            f"up to {MAX_METADATA_KEYS} string pairs, echoed on the job and filterable with `metadata.<key>=<value>`",
            max_properties=MAX_METADATA_KEYS,
            property_names={"minLength": 1, "maxLength": 40, "pattern": r"^[A-Za-z0-9_.\-]+$"},
            additional_properties={"type": "string", "maxLength": 500},
        ),
    ] = msgspec.field(default_factory=dict)


class Video(msgspec.Struct):
    url: str
    thumbnail_url: str | None


class Output(msgspec.Struct):
    videos: list[Video]
    last_frame_url: str | None


class JobError(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    provider_code: str | None = None


class Cost(msgspec.Struct):
    """The four keys are always present (null until known); providers may add figures of their own."""

    credits_estimate: float | None
    usd_estimate: float | None
    credits_charged: float | None
    usd_charged: float | None


class Job(msgspec.Struct):
    """A job as callers see it (fields may be added, never renamed). The schema of what `job_view` emits."""

    id: str
    model: str
    provider: str
    status: Status
    input: Annotated[
        dict[str, Any],
        _doc(
            "as given; each data URI is shown as `inline:<media type>;bytes=<N>;sha256=<hex>` of its decoded "
            "content, except by GET /v1/jobs/{id}"
        ),
    ]
    metadata: dict[str, str]
    provider_task_id: str | None
    output: Output | None
    error: JobError | None
    cost: Annotated[Cost, _doc(additional_properties={"type": "number"})]
    created_at: _Timestamp
    updated_at: _Timestamp
    completed_at: _Timestamp | None


class JobList(msgspec.Struct):
    data: list[Job]
    next_cursor: Annotated[str, _doc("pass as `cursor` for the next page; null on the last page")] | None


_encode = msgspec.json.Encoder().encode


def job_view(record: JobRecord, *, full_input: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public job object as plain data (what the API returns and each event carries).

    Its input shows data URIs as placeholders, unless `full_input` (the input with them) is given.
    """
    return {
        "id": record.id,
        "model": record.model,
        "provider": record.provider,
        "status": record.status,
        "input": shown_input(record.input) if full_input is None else full_input,
        "metadata": record.metadata,
        "provider_task_id": record.provider_task_id,
        "output": record.output,
        "error": record.error,
        "cost": {
            "credits_estimate": None,
            "usd_estimate": None,
            "credits_charged": None,
            "usd_charged": None,
            **record.cost,
        },
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "completed_at": record.completed_at,
    }


def encode_job(record: JobRecord, *, full_input: dict[str, Any] | None = None) -> bytes:
    return _encode(job_view(record, full_input=full_input))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the state machine ----------------------------------------------------------------------------


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider said about a task, already normalized (from polling or a verified webhook)."""

    status: Status
    provider_task_id: str | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None


def new_job(
    *,
    job_id: str,
    api_key_id: str,
    model: str,
    provider: str,
    input: dict[str, Any],
    metadata: dict[str, str],
    cost: dict[str, Any],
    callback_token: str,
    now: float,
    timeout: float,
) -> JobRecord:
    stamp = iso(now)
    return JobRecord(
        id=job_id,
        api_key_id=api_key_id,
        model=model,
        provider=provider,
        status="queued",
        stage=Stage.QUEUED,
        input=input,
        metadata=metadata,
        cost=cost,
        callback_token=callback_token,
        created_at=stamp,
        updated_at=stamp,
        deadline_at=now + timeout,
        dispatch_state=DispatchState.PENDING,
        next_attempt_at=now,
    )


def submitted(
    job: JobRecord, *, provider_task_id: str, cost: dict[str, Any] | None, now: float, next_poll_at: float
) -> tuple[JobRecord, str | None] | None:
    """The provider accepted the create; None if the job has moved on meanwhile."""
    if job.stage != Stage.QUEUED:
        if job.dispatch_state != DispatchState.DONE:
            return msgspec.structs.replace(job, dispatch_state=DispatchState.DONE, lease_until=None), None
        return None
    return (
        msgspec.structs.replace(
            job,
            stage=Stage.SUBMITTED,
            provider_task_id=provider_task_id,
            cost={**job.cost, **(cost or {})},
            updated_at=iso(now),
            dispatch_state=DispatchState.DONE,
            next_attempt_at=None,
            # A callback that came before this answer asked for an early check (see confirm_soon).
            next_poll_at=min(next_poll_at, job.next_poll_at) if job.next_poll_at is not None else next_poll_at,
            lease_until=None,
        ),
        "job.submitted",
    )


def reported(job: JobRecord, report: Report, *, now: float) -> tuple[JobRecord, str | None] | None:
    """Apply a provider report; None when it would move the job backwards or change a finished job."""
    target = _STAGE_OF[report.status]
    if job.stage == Stage.TERMINAL or target <= job.stage:
        return None
    changes: dict[str, Any] = {"stage": target, "status": report.status, "updated_at": iso(now)}
    if report.provider_task_id and not job.provider_task_id:
        changes["provider_task_id"] = report.provider_task_id
    if report.cost:
        changes["cost"] = {**job.cost, **report.cost}
    if target == Stage.TERMINAL:
        changes.update(
            output=report.output,
            error=report.error,
            completed_at=iso(now),
            dispatch_state=DispatchState.DONE,
            next_attempt_at=None,
            next_poll_at=None,
            lease_until=None,
        )
    event = "job.submitted" if report.status == "queued" else f"job.{report.status}"
    return msgspec.structs.replace(job, **changes), event


def failed(
    job: JobRecord, *, code: str, message: str, now: float, provider_code: str | None = None
) -> tuple[JobRecord, str | None] | None:
    error: dict[str, Any] = {"code": code, "message": message}
    if provider_code is not None:
        error["provider_code"] = provider_code
    return reported(job, Report(status="failed", error=error), now=now)


def cancelled(job: JobRecord, *, now: float) -> tuple[JobRecord, str | None] | None:
    return reported(job, Report(status="cancelled"), now=now)


def confirm_soon(job: JobRecord, *, now: float) -> tuple[JobRecord, str | None] | None:
    """A callback that cannot be trusted as is: check the provider's status endpoint now.

    A job still being sent keeps the dispatcher's lease; it is checked as soon as it is submitted.
    """
    if job.stage == Stage.TERMINAL:
        return None
    if job.stage == Stage.QUEUED:
        return msgspec.structs.replace(job, next_poll_at=now), None
    return msgspec.structs.replace(job, next_poll_at=now, lease_until=None), None


def rescheduled(job: JobRecord, **changes: Any) -> tuple[JobRecord, str | None] | None:
    """A bookkeeping change (retry time, lease, poll time) that logs no event; ignored once terminal."""
    if job.stage == Stage.TERMINAL:
        return None
    return msgspec.structs.replace(job, **changes), None
