"""imini router (seed 003): Seedance 2.0 as `doubao/seedance-2.0` behind one Bearer key; imini has no webhooks,
so its jobs are completed by polling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import structlog

from service.lifecycle import Report
from service.providers.base import (
    ModelSpec,
    PollOnlyProvider,
    Price,
    Submission,
    generation_failed,
    passed_options,
    text,
)
from service.schedule import Backoff
from service.vocabulary import Status
from storage import JobRecord

log = structlog.get_logger("reelay.providers.imini")

# imini spells resolutions in upper case and rejects Reelay's lower-case spelling (trap 23).
RESOLUTIONS = {"480p": "480P", "720p": "720P"}
_ASPECTS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
_DEFAULT_ASPECT = "adaptive"
_FRAMES = ("first_frame", "last_frame")
_REFERENCES = ("reference_images", "reference_videos", "reference_audios")
_EXTRA_PARAMS = ("seed", "watermark", "return_last_frame")
_INPUTS = ("generate_audio", *_EXTRA_PARAMS, *_FRAMES, *_REFERENCES)
# imini's own spellings of what Reelay sends from the normalized input; no imini field is left for provider_options.
_RESERVED = {"extra_params": tuple(f"input.{name}" for name in _EXTRA_PARAMS)}

SPEC = ModelSpec(
    id="imini/doubao/seedance-2.0",
    provider="imini",
    upstream_model="doubao/seedance-2.0",
    durations=tuple(range(4, 16)),
    default_duration=5,
    resolutions=tuple(RESOLUTIONS),
    default_resolution="720p",
    aspect_ratios=_ASPECTS,
    inputs=_INPUTS,
    max_reference_images=9,
    max_reference_videos=3,
    max_reference_audios=3,
    audio=True,
    seed_range=(-1, 2**32 - 1),
    callbacks=False,
    price=Price(
        unit="credits",
        note="imini publishes no price table; what a job costs shows only in the imini account's ledger",
    ),
    # The frame modes and the multimodal reference mode are distinct upstream modes that cannot be mixed.
    exclusive=tuple((frame, reference) for frame in _FRAMES for reference in _REFERENCES),
    requires=(("last_frame", ("first_frame",)), ("reference_audios", ("reference_images", "reference_videos"))),
    urls_only=("reference_videos",),
    default_aspect_ratio="adaptive",
)


class Imini(PollOnlyProvider):
    name: ClassVar[str] = "imini"
    default_base_url: ClassVar[str] = "https://openapi.imini.ai/imini/router"
    models: ClassVar[tuple[ModelSpec, ...]] = (SPEC,)
    # No idempotency key and no task list: a create whose answer was lost cannot be reconciled.
    unknown_outcome: ClassVar[str] = "fail"
    label: ClassVar[str] = "imini"
    # imini's status words are Reelay's.
    statuses: ClassVar[Mapping[str, Status]] = {
        "queued": "queued",
        "processing": "processing",
        "succeeded": "succeeded",
        "failed": "failed",
    }
    # Poll-only, and a Seedance 2 video takes minutes (imini documents no time): a first look at 30 s, then backing
    # off to once a minute.
    poll_schedule: ClassVar[Backoff] = Backoff(initial=30.0, factor=1.5, cap=60.0, jitter=0.2)
    min_retry_after: ClassVar[float] = 5.0
    reserved: ClassVar[Mapping[str, tuple[str, ...]]] = _RESERVED

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    def error_detail(self, body: Any) -> tuple[str | None, str | None]:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return super().error_detail(body)
        message = text(err.get("message")) or "imini refused the request"
        return text(err.get("code")), _with_request_id(message, err.get("request_id"))

    def payload(self, job: JobRecord, spec: ModelSpec) -> dict[str, Any]:
        given = job.input
        body: dict[str, Any] = {
            "model": spec.upstream_model,
            "prompt": given["prompt"],
            "resolution": RESOLUTIONS[given.get("resolution", spec.default_resolution)],
            "aspect_ratio": given.get("aspect_ratio", _DEFAULT_ASPECT),
            "duration": given.get("duration", spec.default_duration),
            # imini adds audio unless told not to (trap 24); Reelay's default is silence, as for every provider.
            "generate_audio": bool(given.get("generate_audio", False)),
        }
        images = [{"url": given[frame], "reference_type": frame} for frame in _FRAMES if given.get(frame)]
        images += [{"url": url, "reference_type": "asset"} for url in given.get("reference_images") or ()]
        if images:
            body["reference_images"] = images
        for field in ("reference_videos", "reference_audios"):
            if given.get(field):
                body[field] = [{"url": url} for url in given[field]]
        extra = {name: given[name] for name in _EXTRA_PARAMS if name in given}
        if extra:
            body["extra_params"] = extra  # seed, watermark and return_last_frame are nested (trap 27)
        body.update(passed_options(spec, given))
        return body

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        # imini has no callback field, so callback_url is not sent: the create is polled instead.
        answer = await self.call("POST", "/v1/videos/generate", json=self.payload(job, spec), creates=True)
        # The answer carries no status (trap 26): a 200 means the task is queued.
        return Submission(provider_task_id=_task_id(answer))

    async def fetch(self, provider_task_id: str) -> Report:
        answer = await self.call("GET", f"/v1/videos/tasks/{quote(provider_task_id, safe='')}")
        if not isinstance(answer, dict):
            raise ValueError("imini task answer is not an object")
        return self.report(answer)

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """Every video of a succeeded task; the last frame is read at the top level or on a video [A]."""
        items = data.get("videos")
        videos = (
            [item for item in items if isinstance(item, dict) and text(item.get("url"))]
            if isinstance(items, list)
            else []
        )
        if not videos:
            return None
        last_frame = text(data.get("last_frame_url")) or next(
            (url for video in videos if (url := text(video.get("last_frame_url")))), None
        )
        return {
            "videos": [{"url": video["url"], "thumbnail_url": text(video.get("cover_url"))} for video in videos],
            "last_frame_url": last_frame,
        }

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        err = data.get("error")
        err = err if isinstance(err, dict) else {}
        log.warning("imini.task_failed", provider_code=text(err.get("code")), request_id=text(err.get("request_id")))
        return generation_failed(
            _with_request_id(text(err.get("message")) or "the provider reported failure", err.get("request_id")),
            text(err.get("code")) or "failed",
        )

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        return text(data.get("task_id"))

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        return {}  # no published prices: nothing to estimate


def _task_id(answer: Any) -> str:
    # Ids are long digit strings (trap 30): they are kept as the provider wrote them, never converted to numbers.
    task_id = answer.get("task_id") if isinstance(answer, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("imini create answer has no task_id string")
    return task_id


def _with_request_id(message: str, request_id: Any) -> str:
    """imini support asks for the request id, so it travels with the message callers see."""
    return f"{message} (imini request_id {request_id})" if isinstance(request_id, str) and request_id else message
