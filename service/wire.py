"""The job on the wire: the msgspec structs of `/v1/jobs` requests and answers, and the job's JSON encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from service.assets import Asset
from service.inline import shown_input
from service.vocabulary import EVENT_TYPES, Status
from storage import JobRecord

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

# What a job's `webhook_url` receives unless `webhook_events` says otherwise: how the job ended.
DEFAULT_JOB_WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
PROMPT_MAX_CHARS = 5000  # a model's provider may allow fewer (its `max_prompt_chars`)
# The public values of the normalized enums; each model accepts a subset (GET /v1/models), anything else is a 400.
RESOLUTIONS = ("480p", "720p", "1080p")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21", "adaptive")


def schema_doc(description: str | None = None, **schema: Any) -> msgspec.Meta:
    """OpenAPI-only facts for a field (Litestar applies `extra` to the field's schema; msgspec ignores it).

    For what Litestar cannot derive from the type: additionalProperties, formats, enums checked per model.
    """
    extra: dict[str, Any] = {"extra": schema}
    if description is not None:
        extra["description"] = description
    return msgspec.Meta(extra_json_schema=extra)


_URL_ITEMS = {"type": "string", "minLength": 1, "maxLength": 10_000_000}
_Timestamp = Annotated[str, schema_doc(format="date-time")]


class JobInput(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Normalized generation input; each adapter maps it to its provider's own names."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_MAX_CHARS)]
    duration: Annotated[int, schema_doc("seconds; the model's `durations` (GET /v1/models)")] | None = None
    resolution: Annotated[str, schema_doc("one of the model's `resolutions`", enum=[*RESOLUTIONS, None])] | None = None
    aspect_ratio: (
        Annotated[str, schema_doc("one of the model's `aspect_ratios`", enum=[*ASPECT_RATIOS, None])] | None
    ) = None
    generate_audio: bool | None = None
    seed: Annotated[int, schema_doc("within the model's `seed_range`")] | None = None
    negative_prompt: Annotated[str, msgspec.Meta(max_length=5000)] | None = None
    camera_fixed: bool | None = None
    watermark: bool | None = None
    return_last_frame: bool | None = None
    first_frame: Url | None = None
    last_frame: Url | None = None
    reference_images: Annotated[list[Url], msgspec.Meta(max_length=16), schema_doc(items=_URL_ITEMS)] | None = None
    reference_videos: Annotated[list[Url], msgspec.Meta(max_length=16), schema_doc(items=_URL_ITEMS)] | None = None
    reference_audios: Annotated[list[Url], msgspec.Meta(max_length=16), schema_doc(items=_URL_ITEMS)] | None = None
    provider_options: (
        Annotated[
            dict[str, Any],
            schema_doc("provider-only fields the model passes through: its `provider_options` in GET /v1/models"),
        ]
        | None
    ) = None


class JobCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200, examples=["seedancee2/pro"])]
    input: Annotated[JobInput, schema_doc(additional_properties=False)]
    metadata: Annotated[
        dict[MetadataKey, MetadataValue],
        msgspec.Meta(max_length=MAX_METADATA_KEYS),
        schema_doc(
            f"up to {MAX_METADATA_KEYS} string pairs, echoed on the job and filterable with `metadata.<key>=<value>`",
            max_properties=MAX_METADATA_KEYS,
            property_names={"minLength": 1, "maxLength": 40, "pattern": r"^[A-Za-z0-9_.\-]+$"},
            additional_properties={"type": "string", "maxLength": 500},
        ),
    ] = msgspec.field(default_factory=dict)
    webhook_url: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=2048,
                description="a receiver for this job's events: POSTed, signed with the key's webhook secret",
            ),
        ]
        | None
    ) = None
    webhook_events: (
        Annotated[
            list[str],
            msgspec.Meta(max_length=len(EVENT_TYPES) + 1),
            schema_doc(
                f'event types sent to `webhook_url` (default {list(DEFAULT_JOB_WEBHOOK_EVENTS)}), or ["*"] for all',
                items={"type": "string", "enum": [*EVENT_TYPES, "*"]},
            ),
        ]
        | None
    ) = None
    # Last, and left out of the idempotency hash when absent, so keys stored before it existed still match.
    deadline_seconds: (
        Annotated[
            int,
            schema_doc(
                "fail the job with `timeout` if it has not finished this many seconds after it was created: "
                "1 to the operator's REELAY_JOB_TIMEOUT_SECONDS (the default deadline); with a `Cancel-After` "
                "header too, the smaller wins",
                minimum=1,
            ),
        ]
        | None
    ) = None


class Video(msgspec.Struct):
    url: str
    thumbnail_url: str | None


class ArchiveError(msgspec.Struct):
    """The first output whose copy into the asset store failed for good (the others' copies are in `assets`)."""

    code: Annotated[str, schema_doc(enum=["too_large", "content_type", "private_address", "expired", "unreachable"])]
    message: str
    variant: str
    index: int


class Output(msgspec.Struct):
    videos: list[Video]
    last_frame_url: str | None
    assets: (
        Annotated[
            list[Asset],
            schema_doc("the outputs copied into Reelay's asset store (absent until `job.archived`); `url` is signed"),
        ]
        | None
    ) = None
    archive_error: ArchiveError | None = None
    assets_expired_at: (
        Annotated[
            str,
            schema_doc(
                "when REELAY_ASSET_RETENTION_DAYS deleted the archived `assets` (their content then answers 410)",
                format="date-time",
            ),
        ]
        | None
    ) = None


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


class Attempt(msgspec.Struct, omit_defaults=True):
    """One candidate a job was put on: by a route's failover, or the one model of a plain job."""

    model: str
    provider: str
    started_at: _Timestamp
    provider_task_id: str | None = None
    left: Annotated[
        str | None,
        schema_doc(
            "why the job left this candidate (absent while it is on it): rejected, unavailable, circuit_open, "
            "not_configured, not_created or generation_failed"
        ),
    ] = None
    left_at: _Timestamp | None = None
    error: JobError | None = None
    cost: dict[str, Any] | None = None
    answer_lost: Annotated[
        bool,
        schema_doc(
            "a create to this candidate was sent and its answer lost: the job leaves it only where the provider "
            "proves no task exists (README, Routes and failover)"
        ),
    ] = False


class Job(msgspec.Struct):
    """A job as callers see it (fields may be added, never renamed). The schema of what `job_view` emits."""

    id: str
    model: Annotated[str, schema_doc("the model id or route id the job was created with")]
    routed_model: Annotated[str, schema_doc("the model id the job is on: its route's current candidate, or `model`")]
    provider: str
    status: Status
    input: Annotated[
        dict[str, Any],
        schema_doc(
            "as given; each data URI is shown as `inline:<media type>;bytes=<N>;sha256=<hex>` of its decoded "
            "content, except by GET /v1/jobs/{id}"
        ),
    ]
    metadata: dict[str, str]
    provider_task_id: str | None
    output: Output | None
    error: JobError | None
    cost: Annotated[Cost, schema_doc(additional_properties={"type": "number"})]
    created_at: _Timestamp
    updated_at: _Timestamp
    completed_at: _Timestamp | None
    attempts: list[Attempt]


class JobList(msgspec.Struct):
    data: list[Job]
    next_cursor: Annotated[str, schema_doc("pass as `cursor` for the next page; null on the last page")] | None


_encode = msgspec.json.Encoder().encode


def job_view(
    record: JobRecord, *, full_input: dict[str, Any] | None = None, signer: AssetSigner | None = None
) -> dict[str, Any]:
    """The public job object as plain data (what the API returns and each event carries).

    Its input shows data URIs as placeholders, unless `full_input` (the input with them) is given. With `signer`,
    each archived asset's `url` is signed afresh (an event carries the one signed when the job was archived).
    """
    return {
        "id": record.id,
        "model": record.model,
        "routed_model": record.served_model,
        "provider": record.provider,
        "status": record.status,
        "input": shown_input(record.input) if full_input is None else full_input,
        "metadata": record.metadata,
        "provider_task_id": record.provider_task_id,
        "output": record.output if signer is None else signed_output(record.id, record.output, signer),
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
        "attempts": record.attempts,
    }


def encode_job(
    record: JobRecord, *, full_input: dict[str, Any] | None = None, signer: AssetSigner | None = None
) -> bytes:
    return _encode(job_view(record, full_input=full_input, signer=signer))


AssetSigner = Callable[[str, str, int], str]
"""A fresh signed URL of a job's asset: (job id, variant, index) -> url."""


def signed_output(job_id: str, output: dict[str, Any] | None, signer: AssetSigner) -> dict[str, Any] | None:
    """The output with each archived asset's `url` signed again, so a job read now shows URLs valid from now on."""
    assets = output.get("assets") if output else None
    if not output or not assets or output.get("assets_expired_at"):
        return output
    return {**output, "assets": [{**a, "url": signer(job_id, a["variant"], a["index"])} for a in assets]}
