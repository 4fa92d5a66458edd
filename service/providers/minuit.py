"""Minuit API (seed 000): Seedance high-quality templates (t2v, i2v or r2v, chosen from the inputs) and Wan 2.7
image-to-video; its callbacks are unsigned, so each one only makes Reelay ask the status endpoint."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from reelay_signing import SignatureError
from service.lifecycle import Report
from service.providers.base import (
    HttpProvider,
    InputRefused,
    ModelSpec,
    PermanentError,
    Price,
    Submission,
    WebhookNotice,
    generation_failed,
    is_number,
    passed_options,
    text,
)
from service.schedule import Backoff
from service.settings import provider_variable
from service.vocabulary import Status
from storage import JobRecord

HIGH_QUALITY = "high_quality"
WAN = "wan2.7-i2v-spicy"
MODERATION_SETTING = provider_variable("minuit", "moderation")
# Credits per second of the high-quality templates; 1 credit is $0.005 at the base reference rate.
RATES = {"480p": 16, "720p": 34, "1080p": 85}
USD_PER_CREDIT = 0.005
# Minuit's own spellings of what Reelay sends from the normalized input; moderation is the operator's.
_RESERVED = {
    "template": ("model", "input.first_frame", "input.reference_images"),
    "image": ("input.first_frame",),
    "images": ("input.first_frame", "input.reference_images"),
    "video_urls": ("input.reference_videos",),
    "audio_urls": ("input.reference_audios",),
    "audio_url": ("input.reference_audios",),
    "audio": ("input.generate_audio",),
    "moderation": (MODERATION_SETTING,),
    "callback_url": (),
}

MODELS = (
    ModelSpec(
        id="minuit/high_quality",
        provider="minuit",
        upstream_model=HIGH_QUALITY,
        durations=tuple(range(4, 16)),
        default_duration=5,
        resolutions=("480p", "720p", "1080p"),
        default_resolution="720p",
        aspect_ratios=("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive"),
        inputs=("generate_audio", "first_frame", "reference_images", "reference_videos", "reference_audios"),
        max_reference_images=9,
        max_reference_videos=3,
        max_reference_audios=3,
        audio=True,
        callbacks=True,
        price=Price(unit="credits", per_second={k: float(v) for k, v in RATES.items()}, usd_per_credit=USD_PER_CREDIT),
        # A first frame selects img2video and reference images select reference2video: one template per task.
        exclusive=(("first_frame", "reference_images"),),
        # text2video has no field for reference videos or audios.
        requires=(
            ("reference_videos", ("first_frame", "reference_images")),
            ("reference_audios", ("first_frame", "reference_images")),
        ),
    ),
    ModelSpec(
        id=f"minuit/{WAN}",
        provider="minuit",
        upstream_model=WAN,
        durations=tuple(range(2, 16)),
        default_duration=5,
        resolutions=("720p", "1080p"),
        default_resolution="720p",
        # Wan documents no aspect_ratio: the video takes the first frame's shape.
        aspect_ratios=("adaptive",),
        inputs=("generate_audio", "seed", "negative_prompt", "first_frame", "reference_audios"),
        # Sent as Wan's single `audio_url`.
        max_reference_audios=1,
        audio=True,
        # The range of Wan 2.7 upstream; Minuit documents none.
        seed_range=(0, 2**31 - 1),
        callbacks=True,
        price=None,
        required=("first_frame",),  # image-to-video only
        provider_options=(("prompt_extend", "boolean"),),  # Wan's prompt rewriting, on by default upstream
    ),
)


class Minuit(HttpProvider):
    name: ClassVar[str] = "minuit"
    default_base_url: ClassVar[str] = "https://seedance2.lol"
    extra_settings: ClassVar[tuple[str, ...]] = ("moderation",)
    models: ClassVar[tuple[ModelSpec, ...]] = MODELS
    # No idempotency key and no list endpoint: a create whose answer was lost cannot be found or resent safely.
    unknown_outcome: ClassVar[str] = "fail"
    signs_webhooks: ClassVar[bool] = False
    statuses: ClassVar[Mapping[str, Status]] = {
        "created": "queued",
        "queueing": "queued",
        "processing": "processing",
        "success": "succeeded",
        "failed": "failed",
    }
    # The doc's sample client polls every 7 s; its callbacks are unsigned and undocumented, so polling (after the
    # callback grace) backs off only to a minute. An untrusted callback asks for a check at once.
    poll_schedule: ClassVar[Backoff] = Backoff(initial=7.0, factor=1.5, cap=60.0, jitter=0.2)
    # Its only server error, 502 upstream_error, may be a moderation rejection: retried, but not forever.
    server_error_attempts: ClassVar[int | None] = 5
    reserved: ClassVar[Mapping[str, tuple[str, ...]]] = _RESERVED

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.settings.api_key}"}

    def payload(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> tuple[str, dict[str, Any]]:
        """The create path and body for a job."""
        moderation = self.settings.options.get("moderation")
        if not moderation:
            raise PermanentError(f"Minuit needs a moderation value: set {MODERATION_SETTING} (documented: disabled)")
        given = job.input
        body: dict[str, Any]
        if spec.upstream_model == WAN:
            path, body = "/ent/v2/img2video", {"model": WAN, "image": given["first_frame"]}
        elif given.get("first_frame"):
            path, body = "/ent/v2/img2video", {"template": "i2v_high_quality", "images": [given["first_frame"]]}
        elif given.get("reference_images"):
            path, body = (
                "/ent/v2/reference2video",
                {"template": "r2v_high_quality", "images": given["reference_images"]},
            )
        else:
            path, body = "/ent/v2/text2video", {"template": "t2v_high_quality"}
        body["prompt"] = given["prompt"]
        body["duration"] = given.get("duration", spec.default_duration)
        body["resolution"] = given.get("resolution", spec.default_resolution)
        # Wan's only aspect ratio, adaptive, is what it does when none is sent.
        if "aspect_ratio" in given and spec.upstream_model != WAN:
            body["aspect_ratio"] = given["aspect_ratio"]
        # Templates default to no audio and Wan to audio: always say which, audio may change the price.
        body["audio"] = bool(given.get("generate_audio", False))
        if spec.upstream_model == WAN:
            for ours in ("negative_prompt", "seed"):
                if ours in given:
                    body[ours] = given[ours]
            if given.get("reference_audios"):
                body["audio_url"] = given["reference_audios"][0]
        else:
            for ours, theirs in (("reference_videos", "video_urls"), ("reference_audios", "audio_urls")):
                if given.get(ours):
                    body[theirs] = list(given[ours])
        body.update(passed_options(spec, given))
        body["moderation"] = moderation
        if callback_url:
            body["callback_url"] = callback_url
        return path, body

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        path, body = self.payload(job, spec, callback_url)
        answer = await self.call("POST", path, json=body, creates=True)
        task_id = answer.get("task_id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("Minuit create answer has no task_id")
        return Submission(provider_task_id=task_id, cost=_charged(answer.get("quota")) or None)

    async def fetch(self, provider_task_id: str) -> Report:
        answer = await self.call("GET", f"/ent/v2/tasks/{provider_task_id}/creations")
        if not isinstance(answer, dict):
            raise ValueError("Minuit status answer is not an object")
        return self.report(answer)

    def status_word(self, data: Mapping[str, Any]) -> str:
        # Polling says `state`; Vidu-style callbacks may say `status`.
        return str(data.get("state", data.get("status"))).lower()

    def job_status(self, word: str, data: Mapping[str, Any]) -> Status:
        status = super().job_status(word, data)
        # A task cancelled upstream fails with UserCancelled.
        return "cancelled" if status == "failed" and text(data.get("err_code")) == "UserCancelled" else status

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        creations = data.get("creations")
        videos = [
            {"url": item["url"], "thumbnail_url": text(item.get("cover_url"))}
            for item in (creations if isinstance(creations, list) else [])
            if isinstance(item, dict) and text(item.get("url"))
        ]
        return {"videos": videos, "last_frame_url": None} if videos else None

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        message = text(data.get("err_msg")) or "the provider reported failure"
        return generation_failed(message, text(data.get("err_code")) or "failed")

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return text(data.get("task_id")) or text(data.get("id"))

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float, job: JobRecord | None) -> None:
        if job is None:
            # Nothing signs Minuit callbacks: only the per-job URL, whose token the gateway checked, is trusted.
            raise SignatureError("invalid_token", "Minuit callbacks are accepted only on their per-job callback URL")

    def parse_webhook(self, body: bytes) -> WebhookNotice:
        data = msgspec.json.decode(body)
        if not isinstance(data, dict):
            raise ValueError("Minuit callback body is not an object")
        report = self.report(data)
        if report.provider_task_id is None:
            raise ValueError("Minuit callback names no task")
        state = data.get("state", data.get("status"))
        # The body digest makes only a byte-identical redelivery a duplicate, so a bogus body cannot mask a real one.
        digest = hashlib.sha256(body).hexdigest()[:16]
        return WebhookNotice(
            provider_task_id=report.provider_task_id,
            receipt_key=f"{report.provider_task_id}:{state}:{digest}",
            report=report,
        )

    def needs_confirmation(self, notice: WebhookNotice, job: JobRecord) -> bool:
        return True  # an unsigned body proves nothing; GET /creations decides

    def validate(self, spec: ModelSpec, input: Mapping[str, Any]) -> None:
        if not self.settings.options.get("moderation"):
            raise InputRefused(
                "model",
                f"{spec.id} is unavailable because Minuit's required moderation value is not configured "
                f"(set {MODERATION_SETTING}; the documented value is disabled)",
            )

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        if spec.upstream_model != HIGH_QUALITY:
            return {}  # Wan 2.7 has no published price
        credits = RATES[input.get("resolution", spec.default_resolution)] * input.get("duration", spec.default_duration)
        return {"credits_estimate": credits, "usd_estimate": round(credits * USD_PER_CREDIT, 6)}


def _charged(quota: Any) -> dict[str, Any]:
    """What the create answer's quota says this task cost. Its balance figures (remaining, total_credits,
    used_credits) are the operator's account, not the job's cost, and do not always add up: left out."""
    if not isinstance(quota, dict) or not is_number(quota.get("cost")):
        return {}
    return {"credits_charged": quota["cost"], "usd_charged": round(quota["cost"] * USD_PER_CREDIT, 6)}
