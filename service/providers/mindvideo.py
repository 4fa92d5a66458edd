"""MindVideo (seed 001): `doubao-seedance-2-0-fast` behind an Idempotency-Key create and a poll-only status endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from service.lifecycle import Report
from service.providers.base import (
    InputRefused,
    ModelSpec,
    PollOnlyProvider,
    Price,
    Submission,
    generation_failed,
    is_number,
    passed_options,
)
from service.schedule import Backoff
from service.vocabulary import Status
from storage import JobRecord

UPSTREAM_MODEL = "doubao-seedance-2-0-fast"
MAX_PROMPT_CHARS = 4000
MAX_IMAGES = 9
SEED_MAX = 2**31 - 1  # int32: trap 14
# MindVideo's own spellings of what Reelay sends from the normalized input; of its schema only `tools` is left.
_RESERVED = {
    "size": ("input.aspect_ratio",),
    "image_urls": ("input.reference_images",),
    "image_with_roles": ("input.first_frame", "input.last_frame", "input.reference_images"),
    "video_urls": ("input.reference_videos",),
    "audio_urls": ("input.reference_audios",),
}
WEB_SEARCH = {"type": "web_search"}  # the schema's only tool
# Normalized input → the same-named MindVideo field, sent only when given.
_PLAIN = ("seed", "watermark", "camera_fixed", "return_last_frame")

MODEL = ModelSpec(
    id=f"mindvideo/{UPSTREAM_MODEL}",
    provider="mindvideo",
    upstream_model=UPSTREAM_MODEL,
    durations=tuple(range(4, 16)),
    default_duration=5,
    resolutions=("480p", "720p"),
    # Upstream defaults to 480p but its own example sends 720p (trap 13); Reelay always sends one, like its peers.
    default_resolution="720p",
    aspect_ratios=("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive"),
    inputs=(
        "generate_audio",
        "seed",
        "watermark",
        "camera_fixed",
        "return_last_frame",
        "first_frame",
        "last_frame",
        "reference_images",
        "reference_videos",
        "reference_audios",
    ),
    max_reference_images=MAX_IMAGES,
    max_reference_videos=3,
    max_reference_audios=3,
    audio=True,
    seed_range=(0, SEED_MAX),
    price=Price(unit="usd", note="per-task cost_estimate returned at create, cost_actual billed; no rate table"),
    # Frame roles cannot be combined with video_urls/audio_urls (trap 15).
    exclusive=(
        ("first_frame", "reference_videos"),
        ("first_frame", "reference_audios"),
        ("last_frame", "reference_videos"),
        ("last_frame", "reference_audios"),
    ),
    requires=(("reference_audios", ("reference_images", "reference_videos")),),
    default_aspect_ratio="16:9",
    provider_options=(("tools", "array"),),
    max_prompt_chars=MAX_PROMPT_CHARS,  # Reelay itself accepts longer prompts
)


class MindVideo(PollOnlyProvider):
    name: ClassVar[str] = "mindvideo"
    default_base_url: ClassVar[str] = "https://api.mindvideo.ai"
    models: ClassVar[tuple[ModelSpec, ...]] = (MODEL,)
    # The Idempotency-Key (the job id) makes a resent create return the original task, never a second charge.
    unknown_outcome: ClassVar[str] = "idempotency"
    label: ClassVar[str] = "MindVideo"
    # MindVideo's status words are Reelay's.
    statuses: ClassVar[Mapping[str, Status]] = {
        "queued": "queued",
        "processing": "processing",
        "succeeded": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    # Poll-only, and a Seedance 2 video takes minutes (no time documented; this is the "fast" model): a first look
    # at 20 s, then backing off to once a minute.
    poll_schedule: ClassVar[Backoff] = Backoff(initial=20.0, factor=1.5, cap=60.0, jitter=0.2)
    reserved: ClassVar[Mapping[str, tuple[str, ...]]] = _RESERVED

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    def validate(self, spec: ModelSpec, input: Mapping[str, Any]) -> None:
        """The schema's rules that ModelSpec cannot express, checked before the job is accepted."""
        frames = sum(1 for role in ("first_frame", "last_frame") if input.get(role))
        if frames and frames + len(input.get("reference_images") or ()) > MAX_IMAGES:
            raise InputRefused(
                "reference_images", "frames and reference images together are too many", {"max_items": MAX_IMAGES}
            )
        tools = (input.get("provider_options") or {}).get("tools") or []
        if any(tool != WEB_SEARCH for tool in tools):  # the schema closes each item (additionalProperties: false)
            raise InputRefused("provider_options.tools", "takes web_search tools only", [WEB_SEARCH])

    def payload(self, job: JobRecord, spec: ModelSpec) -> dict[str, Any]:
        """The create body, from input that `validate` and the ModelSpec have accepted."""
        given = job.input
        body: dict[str, Any] = {
            "prompt": given["prompt"],
            "duration": given.get("duration", spec.default_duration),
            # Both have upstream defaults that differ from the documented example: always explicit (trap 13).
            "resolution": given.get("resolution", spec.default_resolution),
            "generate_audio": bool(given.get("generate_audio", False)),
        }
        if "aspect_ratio" in given:
            body["size"] = given["aspect_ratio"]  # MindVideo's aspect-ratio field on this model (trap 12)
        for field in _PLAIN:
            if field in given:
                body[field] = given[field]
        references = list(given.get("reference_images") or [])
        # Reelay's frame inputs are named like MindVideo's roles.
        roles = [{"url": given[role], "role": role} for role in ("first_frame", "last_frame") if given.get(role)]
        if roles:
            # image_urls cannot be combined with image_with_roles: references travel as roles too (trap 15).
            roles += [{"url": url, "role": "reference_image"} for url in references]
            body["image_with_roles"] = roles
        elif references:
            body["image_urls"] = references
        if given.get("reference_videos"):
            body["video_urls"] = list(given["reference_videos"])
        if given.get("reference_audios"):
            body["audio_urls"] = list(given["reference_audios"])
        body.update(passed_options(spec, given))
        return {"model": spec.upstream_model, "input": body}

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        # MindVideo has no callbacks: callback_url is never sent, and the job is polled.
        answer = await self.call(
            "POST", "/api/v1/tasks", json=self.payload(job, spec), headers={"Idempotency-Key": job.id}, creates=True
        )
        if not isinstance(answer, dict) or not answer.get("task_id"):
            raise ValueError("MindVideo create answer has no task_id")
        estimate = answer.get("cost_estimate")
        return Submission(
            provider_task_id=str(answer["task_id"]),
            cost={"usd_estimate": estimate} if is_number(estimate) else None,
        )

    async def fetch(self, provider_task_id: str) -> Report:
        answer = await self.call("GET", f"/api/v1/tasks/{provider_task_id}")
        if not isinstance(answer, dict):
            raise ValueError("MindVideo status answer is not an object")
        return self.report(answer)

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        out = data.get("output")
        if not isinstance(out, dict):
            return None
        videos = out.get("videos")
        found = [v for v in videos if isinstance(v, dict) and v.get("url")] if isinstance(videos, list) else []
        if not found:
            return None
        return {
            "videos": [{"url": v["url"], "thumbnail_url": v.get("thumbnail_url")} for v in found],
            "last_frame_url": out.get("last_frame_url"),
        }

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        code, message = _failure(data)
        return generation_failed(message, code)

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return str(data["task_id"]) if data.get("task_id") else None

    def cost(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        cost: dict[str, Any] = {}
        if is_number(data.get("cost_estimate")):
            cost["usd_estimate"] = data["cost_estimate"]
        if is_number(data.get("cost_actual")):
            cost["usd_charged"] = data["cost_actual"]
        return cost or None

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # no rate table: the estimate is MindVideo's cost_estimate, known once the task is created


def _failure(data: Mapping[str, Any]) -> tuple[str, str]:
    """(provider code, message) of a failed task, read defensively: the failure shape is not documented."""
    err = data.get("error")
    code = message = None
    if isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
    elif isinstance(err, str):
        code = err
    message = message or data.get("message") or data.get("error_message")
    return (str(code) if code else "failed"), (str(message) if message else "the provider reported failure")
