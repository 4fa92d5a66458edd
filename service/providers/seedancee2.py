"""Seedancee2 Enterprise API (seed 002): pro, fast and mini; signed terminal webhooks; polling as fallback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from reelay_signing import SignatureError, verify_header
from service.lifecycle import Report
from service.providers.base import (
    HttpProvider,
    ModelSpec,
    Price,
    Submission,
    WebhookNotice,
    generation_failed,
    passed_options,
)
from service.schedule import Backoff
from service.vocabulary import Status
from storage import JobRecord

_ASPECTS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
_INPUTS = (
    "generate_audio",
    "seed",
    "watermark",
    "return_last_frame",
    "first_frame",
    "last_frame",
    "reference_images",
    "reference_videos",
    "reference_audios",
)
_RATES = {
    "pro": {"480p": 10, "720p": 20, "1080p": 50},
    "fast": {"480p": 8, "720p": 16},
    "mini": {"480p": 5, "720p": 10},
}
# Every field of Seedancee2's input is one Reelay fills from the normalized input: no provider-only option is left.
_RESERVED = {
    "generation_type": ("input.first_frame", "input.last_frame"),
    "start_image_url": ("input.first_frame",),
    "end_image_url": ("input.last_frame",),
    "image_urls": ("input.reference_images",),
    "video_url": ("input.reference_videos",),
    "video_urls": ("input.reference_videos",),
    "audio_urls": ("input.reference_audios",),
    "callback_url": (),
}
SIGNATURE_HEADER = "x-seedancee2-signature"


def _spec(model: str) -> ModelSpec:
    rates = _RATES[model]
    return ModelSpec(
        id=f"seedancee2/{model}",
        provider="seedancee2",
        upstream_model=model,
        durations=tuple(range(4, 16)),
        default_duration=5,
        resolutions=tuple(rates),
        # The document states no default resolution, so Reelay always sends one.
        default_resolution="720p",
        aspect_ratios=_ASPECTS,
        inputs=_INPUTS,
        max_reference_images=9,
        max_reference_videos=3,
        max_reference_audios=3,
        audio=True,
        seed_range=(0, 2**32 - 1),
        callbacks=True,
        price=Price(unit="credits", per_second={k: float(v) for k, v in rates.items()}),
        together=(("first_frame", "last_frame"),),
    )


class Seedancee2(HttpProvider):
    name: ClassVar[str] = "seedancee2"
    default_base_url: ClassVar[str] = "https://api.seedancee2.ai"
    models: ClassVar[tuple[ModelSpec, ...]] = (_spec("pro"), _spec("fast"), _spec("mini"))
    # No idempotency, but tasks echo `metadata` and can be listed: a lost create is looked up by job id.
    unknown_outcome: ClassVar[str] = "lookup"
    signs_webhooks: ClassVar[bool] = True
    # Its example task took 6 min 20 s; its signed webhook says when a task ends, so polls (after the callback
    # grace) only catch a lost one.
    poll_schedule: ClassVar[Backoff] = Backoff(initial=60.0, factor=1.5, cap=120.0, jitter=0.2)
    statuses: ClassVar[Mapping[str, Status]] = {
        "pending": "queued",
        "processing": "processing",
        "completed": "succeeded",
        "failed": "failed",
    }
    reserved: ClassVar[Mapping[str, tuple[str, ...]]] = _RESERVED

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    def payload(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> dict[str, Any]:
        given = job.input
        body: dict[str, Any] = {
            "prompt": given["prompt"],
            "duration": given.get("duration", spec.default_duration),
            "resolution": given.get("resolution", spec.default_resolution),
            # Audio changes cost; its default is not documented, so it is always sent.
            "generate_audio": bool(given.get("generate_audio", False)),
        }
        if "aspect_ratio" in given:
            body["aspect_ratio"] = given["aspect_ratio"]
        for ours, theirs in (("seed", "seed"), ("watermark", "watermark"), ("return_last_frame", "return_last_frame")):
            if ours in given:
                body[theirs] = given[ours]
        if "first_frame" in given:
            body["generation_type"] = "first_and_last_frames"
            body["start_image_url"] = given["first_frame"]
            body["end_image_url"] = given["last_frame"]
        for ours, theirs in (
            ("reference_images", "image_urls"),
            ("reference_videos", "video_urls"),
            ("reference_audios", "audio_urls"),
        ):
            if given.get(ours):
                body[theirs] = list(given[ours])
        body.update(passed_options(spec, given))
        request: dict[str, Any] = {
            "model": spec.upstream_model,
            "input": body,
            "metadata": {**job.metadata, "reelay_job_id": job.id},
        }
        if callback_url:
            request["callback_url"] = callback_url
        return request

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        answer = await self.call(
            "POST", "/v1/videos/generations", json=self.payload(job, spec, callback_url), creates=True
        )
        data = _data(answer)
        reserved = data.get("credits_reserved")
        return Submission(
            provider_task_id=str(data["id"]),
            cost={"credits_reserved": reserved} if isinstance(reserved, int | float) else None,
        )

    async def find_submission(self, job: JobRecord) -> Submission | None:
        # The list has no cursor and returns at most 100 newest tasks; older lost creates are not found.
        answer = await self.call("GET", "/v1/videos/generations", params={"limit": 100})
        items = answer.get("data") if isinstance(answer, dict) else None
        for item in items if isinstance(items, list) else []:
            metadata = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(metadata, dict) and metadata.get("reelay_job_id") == job.id:
                return Submission(provider_task_id=str(item["id"]))
        return None

    async def fetch(self, provider_task_id: str) -> Report:
        answer = await self.call("GET", f"/v1/videos/generations/{provider_task_id}")
        return self.report(_data(answer))

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        out = data.get("output")
        if not isinstance(out, dict) or not out.get("video_url"):
            return None
        return {
            "videos": [{"url": out["video_url"], "thumbnail_url": out.get("thumbnail_url")}],
            "last_frame_url": out.get("last_frame_url"),
        }

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        err = data.get("error")
        err = err if isinstance(err, dict) else {}
        return generation_failed(
            str(err.get("message") or "the provider reported failure"), str(err.get("code") or "failed")
        )

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return str(data["id"]) if data.get("id") else None

    def cost(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        cost: dict[str, Any] = {}
        for field in ("credits_charged", "credits_refunded"):
            if isinstance(data.get(field), int | float):
                cost[field] = data[field]
        return cost or None

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float, job: JobRecord | None) -> None:
        secrets = self.settings.webhook_secrets
        if not secrets:
            # Unsigned callbacks cannot be told from forgeries; polling completes the job instead.
            raise SignatureError("signing_not_configured", "no REELAY_SEEDANCEE2_WEBHOOK_SECRET is set")
        verify_header(
            body,
            headers.get(SIGNATURE_HEADER),
            list(secrets),
            tolerance=self.settings.webhook_tolerance_seconds,
            now=now,
        )

    def parse_webhook(self, body: bytes) -> WebhookNotice:
        decoded = msgspec.json.decode(body)
        data = _data(decoded)
        report = self.report(data)
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        job_id = metadata.get("reelay_job_id")
        return WebhookNotice(
            provider_task_id=str(data["id"]),
            receipt_key=f"{data['id']}:{data.get('status')}",
            report=report,
            job_id=job_id if isinstance(job_id, str) else None,
        )

    def needs_confirmation(self, notice: WebhookNotice, job: JobRecord) -> bool:
        # The completed webhook omits last_frame_url; when the caller asked for it, the status endpoint has it.
        output = notice.report.output or {}
        return bool(job.input.get("return_last_frame")) and not output.get("last_frame_url")

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        rate = _RATES[spec.upstream_model][input.get("resolution", spec.default_resolution)]
        return {"credits_estimate": rate * input.get("duration", spec.default_duration)}


def _data(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or not data.get("id"):
        raise ValueError("Seedancee2 answer has no data.id")
    return data
