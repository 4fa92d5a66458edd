"""Magnific Seedance 2.0 Mini (seed 004): the resolution picks the create path, Standard Webhooks callbacks are
verified on the raw body, and the one status path is polled as the fallback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import msgspec

from reelay_signing import SignatureError
from reelay_signing.standard import SECRET_PREFIX, verify_headers
from service.errors import ConfigError
from service.lifecycle import Report
from service.providers.base import (
    HttpProvider,
    ModelSpec,
    Price,
    Submission,
    WebhookNotice,
    generation_failed,
    passed_options,
    text,
)
from service.schedule import Backoff
from service.settings import ProviderSettings, provider_variable
from service.vocabulary import Status
from storage import JobRecord

UPSTREAM_MODEL = "seedance-2-mini"
# Only the create path names the resolution; status and list use the bare model path (trap 33).
TASKS_PATH = f"/v1/ai/video/{UPSTREAM_MODEL}"
MAX_PROMPT_CHARS = 2000
# Named enums, with 9:21 and without `adaptive` (trap 31).
ASPECT_RATIOS = {
    "16:9": "widescreen_16_9",
    "9:16": "social_story_9_16",
    "1:1": "square_1_1",
    "4:3": "classic_4_3",
    "3:4": "traditional_3_4",
    "21:9": "film_horizontal_21_9",
    "9:21": "film_vertical_9_21",
}
DEFAULT_ASPECT_RATIO = "16:9"  # widescreen_16_9, the provider's own default
SAFETY_SETTING = provider_variable("magnific", "enable_safety_checker")
# Magnific's own spellings of what Reelay sends from the normalized input.
_RESERVED = {"image": ("input.first_frame",), "image_end": ("input.last_frame",), "webhook_url": ()}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

MODEL = ModelSpec(
    id=f"magnific/{UPSTREAM_MODEL}",
    provider="magnific",
    upstream_model=UPSTREAM_MODEL,
    durations=(5, 10),  # trap 32
    default_duration=5,
    resolutions=("480p", "720p"),
    default_resolution="720p",
    aspect_ratios=tuple(ASPECT_RATIOS),
    default_aspect_ratio=DEFAULT_ASPECT_RATIO,
    # generate_audio is accepted only as false: Mini has no audio flag (trap 34), so `audio=False` refuses true.
    inputs=("generate_audio", "seed", "camera_fixed", "first_frame", "last_frame"),
    audio=False,
    seed_range=(-1, 4_294_967_295),
    callbacks=True,
    # image_end is used "together with image"; alone it would be dropped silently.
    requires=(("last_frame", ("first_frame",)),),
    price=Price(unit="credits", note="deducted from the Magnific organisation balance; no per-call price published"),
    # The caller's choice only while the operator has not set REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER.
    provider_options=(("enable_safety_checker", "boolean"),),
    max_prompt_chars=MAX_PROMPT_CHARS,
)


class Magnific(HttpProvider):
    name: ClassVar[str] = "magnific"
    default_base_url: ClassVar[str] = "https://api.magnific.com"
    extra_settings: ClassVar[tuple[str, ...]] = ("enable_safety_checker",)
    models: ClassVar[tuple[ModelSpec, ...]] = (MODEL,)
    # No idempotency key, and nothing in the task list ties a task to a job: adopting one could take another's.
    unknown_outcome: ClassVar[str] = "fail"
    signs_webhooks: ClassVar[bool] = True
    # Minutes per video like the other Seedance 2 resellers (it documents no time); its signed webhook says when a
    # task ends, so polls (after the callback grace) only catch a lost one.
    poll_schedule: ClassVar[Backoff] = Backoff(initial=30.0, factor=1.5, cap=120.0, jitter=0.2)
    statuses: ClassVar[Mapping[str, Status]] = {
        "CREATED": "queued",
        "IN_PROGRESS": "processing",
        "COMPLETED": "succeeded",
        "FAILED": "failed",
    }
    # The callback body names only the task; the per-job URL finds the job even before the create's answer is in.
    callback_per_job: ClassVar[bool] = True
    # No rate-limit headers are published; the 50 requests/minute limit refills about one request every 1.2 s.
    min_retry_after: ClassVar[float] = 1.2

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        super().__init__(settings, client)
        self.safety_checker = _safety_checker(settings.options)

    def reserved_options(self, spec: ModelSpec) -> Mapping[str, tuple[str, ...]]:
        # A safety checker the operator set is policy: no caller turns it off.
        return _RESERVED if self.safety_checker is None else {**_RESERVED, "enable_safety_checker": (SAFETY_SETTING,)}

    def auth_headers(self) -> dict[str, str]:
        # Not Bearer (401), and not the legacy x-freepik-api-key of api.freepik.com (trap 41).
        return {"x-magnific-api-key": self.settings.api_key or ""}

    def error_detail(self, body: Any) -> tuple[str | None, str | None]:
        """`{"message"}`, or a problem body with `invalid_params`, nested under `problem` or flat (trap 40)."""
        problem = body.get("problem") if isinstance(body, dict) else None
        source = problem if isinstance(problem, dict) else body
        if not isinstance(source, dict):
            return None, None
        message = source.get("message") if isinstance(source.get("message"), str) else None
        params = source.get("invalid_params")
        if isinstance(params, list) and params:
            reasons = "; ".join(
                f"{p.get('name')}: {p.get('reason')}" if isinstance(p, dict) else str(p) for p in params
            )
            message = f"{message or 'invalid parameters'} ({reasons})"
        return None, message  # no error codes are documented

    def create_path(self, job: JobRecord, spec: ModelSpec) -> str:
        return f"{TASKS_PATH}-{job.input.get('resolution') or spec.default_resolution}"

    def payload(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> dict[str, Any]:
        given = job.input
        body: dict[str, Any] = {
            "prompt": given["prompt"],
            "duration": given.get("duration", spec.default_duration),
            "aspect_ratio": ASPECT_RATIOS[given.get("aspect_ratio") or DEFAULT_ASPECT_RATIO],
        }
        for field in ("seed", "camera_fixed"):
            if field in given:
                body[field] = given[field]
        if given.get("first_frame"):
            body["image"] = _image(given["first_frame"])
        if given.get("last_frame"):
            body["image_end"] = _image(given["last_frame"])
        body.update(passed_options(spec, given))
        if self.safety_checker is not None:
            body["enable_safety_checker"] = self.safety_checker
        if callback_url:
            body["webhook_url"] = callback_url
        return body

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        answer = await self.call(
            "POST", self.create_path(job, spec), json=self.payload(job, spec, callback_url), creates=True
        )
        return Submission(provider_task_id=_task_id(_data(answer)))

    async def fetch(self, provider_task_id: str) -> Report:
        answer = await self.call("GET", f"{TASKS_PATH}/{provider_task_id}")
        return self.report(_data(answer))

    def status_word(self, data: Mapping[str, Any]) -> str:
        return str(data.get("status", "")).upper()  # documented UPPERCASE, read case-insensitively (trap 42)

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        generated = data.get("generated")
        urls = [url for url in generated if isinstance(url, str) and url] if isinstance(generated, list) else []
        if not urls:
            return None
        return {"videos": [{"url": url, "thumbnail_url": None} for url in urls], "last_frame_url": None}

    def no_video(self, data: Mapping[str, Any]) -> dict[str, Any]:
        # COMPLETED without a video is no success (trap 36); provider_code keeps the word it said.
        return generation_failed("the provider reported completion without a video", self.status_word(data))

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        # FAILED carries no reason (trap 37)
        return generation_failed("the provider reported failure and gave no reason", self.status_word(data))

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return text(data.get("task_id"))

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float, job: JobRecord | None) -> None:
        secrets = self.settings.webhook_secrets
        if not secrets:
            raise SignatureError("signing_not_configured", "no REELAY_MAGNIFIC_WEBHOOK_SECRET is set")
        keys: list[str | bytes] = []
        for secret in secrets:
            keys.append(secret)
            if secret.startswith(SECRET_PREFIX):
                # Sources disagree on a whsec_ secret: base64 key (Standard Webhooks) or its UTF-8 text (trap 38).
                keys.append(secret.encode())
        verify_headers(body, headers, keys, tolerance=self.settings.webhook_tolerance_seconds, now=now)

    def parse_webhook(self, body: bytes) -> WebhookNotice:
        decoded = msgspec.json.decode(body)
        # The callback is probably the status body without its `data` wrapper (trap 39); both forms are read.
        wrapped = decoded.get("data") if isinstance(decoded, dict) else None
        data = wrapped if isinstance(wrapped, dict) else decoded
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError("Magnific webhook has no status")
        report = self.report(data)
        task_id = _task_id(data)
        # The webhook-id header would be the natural key, but only the body reaches here: task and status it is.
        return WebhookNotice(provider_task_id=task_id, receipt_key=f"{task_id}:{data['status'].upper()}", report=report)

    def needs_confirmation(self, notice: WebhookNotice, job: JobRecord) -> bool:
        # Callbacks promise only "task ID and status": a COMPLETED without videos may be thin, so the GET decides.
        error = notice.report.error or {}
        return error.get("provider_code") == "COMPLETED"

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # no per-call price is published


def _data(answer: Any) -> dict[str, Any]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise ValueError("Magnific answer has no data object")
    return data


def _task_id(data: Mapping[str, Any]) -> str:
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("Magnific answer has no task_id")
    return task_id


def _image(value: str) -> str:
    """A URL as is; a data URI as the bare base64 that `string<byte>` and the doc's example use (trap 35)."""
    header, comma, encoded = value.partition(",")
    if value.startswith("data:") and comma and header.endswith(";base64"):
        return encoded
    return value


def _safety_checker(options: Mapping[str, str]) -> bool | None:
    """REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER as a bool; None leaves the provider's default (true)."""
    raw = options.get("enable_safety_checker")
    if raw is None:
        return None
    value = _BOOLEANS.get(raw.strip().lower())
    if value is None:
        raise ConfigError(f"{SAFETY_SETTING} must be true or false, got {raw!r}")
    return value
