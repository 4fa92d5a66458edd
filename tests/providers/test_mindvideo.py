"""The MindVideo adapter: exact wire names, the Idempotency-Key, status and cost mapping, and refused webhooks."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing import SignatureError
from sandbox.knobs import SandboxKnobs
from sandbox.mindvideo import create_mindvideo_sandbox
from service.capabilities import check_for, check_input
from service.errors import InvalidRequest
from service.providers.base import OutcomeUnknown, PermanentError, TransientError
from service.providers.mindvideo import MODEL, MindVideo
from service.settings import ProviderSettings
from storage import JobRecord
from tests.providers.recording import Answer, Recorder
from tests.storage.factories import make_job

BASE_URL = "https://api.mindvideo.ai"
API_KEY = "mv_live_sandbox"
SETTINGS = ProviderSettings(base_url=BASE_URL, api_key=API_KEY)
CALLBACK = "http://reelay.test/webhooks/mindvideo/job_x/token"
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
CREATED = {"request_id": "req_1", "task_id": "task_1", "status": "queued", "cost_estimate": 0.0657}


def job(**input: Any) -> JobRecord:
    return make_job(
        model=MODEL.id, provider="mindvideo", input={"prompt": "a drone shot of waves", "duration": 5, **input}
    )


def upstream(answer: Answer | None = None) -> Recorder[MindVideo]:
    """A recording upstream that answers every request with `answer`, by default a created task."""
    return Recorder(MindVideo, SETTINGS, answer or (lambda _: httpx.Response(200, json=CREATED)))


async def sent_input(**input: Any) -> dict[str, Any]:
    recorder = upstream()
    await recorder.adapter().submit(job(**input), MODEL, CALLBACK)
    sent: dict[str, Any] = recorder.sent()["input"]
    return sent


@asynccontextmanager
async def sandboxed(knobs: SandboxKnobs = SLOW) -> AsyncIterator[tuple[MindVideo, httpx.AsyncClient]]:
    """The adapter wired to the emulator in-process, plus a client for the emulator's control endpoints."""
    app = create_mindvideo_sandbox(knobs=knobs)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield MindVideo(SETTINGS, client), client


# -- create: the request ----------------------------------------------------------------------------------


async def test_create_is_a_bearer_post_to_api_v1_tasks_with_the_job_id_as_idempotency_key() -> None:
    recorder = upstream()
    record = job()
    await recorder.adapter().submit(record, MODEL, CALLBACK)
    request = recorder.requests[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/api/v1/tasks"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Idempotency-Key"] == record.id
    assert request.headers["Content-Type"] == "application/json"


async def test_minimal_job_sends_model_slug_and_explicit_resolution_and_audio() -> None:
    recorder = upstream()
    await recorder.adapter().submit(job(), MODEL, CALLBACK)
    assert recorder.sent() == {
        "model": "doubao-seedance-2-0-fast",
        "input": {"prompt": "a drone shot of waves", "duration": 5, "resolution": "720p", "generate_audio": False},
    }


async def test_callback_url_is_never_sent() -> None:
    recorder = upstream()
    await recorder.adapter().submit(job(), MODEL, CALLBACK)
    assert CALLBACK.encode() not in recorder.requests[0].content


async def test_aspect_ratio_is_sent_as_size() -> None:
    sent = await sent_input(aspect_ratio="9:16", resolution="480p", generate_audio=True)
    assert (sent["size"], sent["resolution"], sent["generate_audio"]) == ("9:16", "480p", True)
    assert "aspect_ratio" not in sent


async def test_scalar_options_keep_their_names() -> None:
    sent = await sent_input(seed=2147483647, watermark=True, camera_fixed=True, return_last_frame=True)
    assert {k: sent[k] for k in ("seed", "watermark", "camera_fixed", "return_last_frame")} == {
        "seed": 2147483647,
        "watermark": True,
        "camera_fixed": True,
        "return_last_frame": True,
    }


async def test_reference_images_alone_go_to_image_urls() -> None:
    sent = await sent_input(reference_images=["https://x/1.png", "https://x/2.png"])
    assert sent["image_urls"] == ["https://x/1.png", "https://x/2.png"]
    assert "image_with_roles" not in sent


async def test_frames_go_to_image_with_roles() -> None:
    sent = await sent_input(first_frame="https://x/a.png", last_frame="https://x/b.png")
    assert sent["image_with_roles"] == [
        {"url": "https://x/a.png", "role": "first_frame"},
        {"url": "https://x/b.png", "role": "last_frame"},
    ]


async def test_frames_with_reference_images_send_every_image_as_a_role() -> None:
    sent = await sent_input(first_frame="https://x/a.png", reference_images=["https://x/r.png"])
    assert sent["image_with_roles"] == [
        {"url": "https://x/a.png", "role": "first_frame"},
        {"url": "https://x/r.png", "role": "reference_image"},
    ]
    assert "image_urls" not in sent


async def test_reference_videos_and_audios_go_to_video_urls_and_audio_urls() -> None:
    sent = await sent_input(reference_videos=["https://x/v.mp4"], reference_audios=["https://x/a.mp3"])
    assert (sent["video_urls"], sent["audio_urls"]) == (["https://x/v.mp4"], ["https://x/a.mp3"])


async def test_provider_options_merge_known_schema_fields() -> None:
    sent = await sent_input(provider_options={"tools": [{"type": "web_search"}]})
    assert sent["tools"] == [{"type": "web_search"}]


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({"provider_options": {"negative_prompt": "blur"}}, "input.provider_options.negative_prompt"),
        ({"provider_options": {"tools": [{"type": "code_interpreter"}]}}, "input.provider_options.tools"),
        ({"reference_audios": ["https://x/a.mp3"]}, "input.reference_audios"),
        (
            {
                "first_frame": "https://x/a.png",
                "last_frame": "https://x/b.png",
                "reference_images": [f"https://x/{i}.png" for i in range(8)],
            },
            "input.reference_images",
        ),
        ({"prompt": "p" * 4001}, "input.prompt"),
    ],
    ids=[
        "unknown-provider-option",
        "unknown-tool",
        "audio-without-images-or-videos",
        "more-than-nine-images",
        "long-prompt",
    ],
)
async def test_inputs_the_schema_refuses_are_refused_before_the_job_is_accepted(
    input: dict[str, Any], field: str
) -> None:
    recorder = upstream()
    with pytest.raises(InvalidRequest) as caught:
        check_for(MODEL, recorder.adapter(), {"prompt": "p", **input})
    assert caught.value.details["field"] == field
    assert MODEL.id in caught.value.message
    assert recorder.requests == []


# -- create: the answer -------------------------------------------------------------------------------------


async def test_submission_carries_task_id_and_usd_estimate() -> None:
    submission = await upstream().adapter().submit(job(), MODEL, CALLBACK)
    assert submission.provider_task_id == "task_1"
    assert submission.cost == {"usd_estimate": 0.0657}


async def test_create_answer_without_task_id_is_not_understood() -> None:
    recorder = upstream(lambda _: httpx.Response(200, json={"request_id": "req_1", "status": "queued"}))
    with pytest.raises(ValueError, match="task_id"):
        await recorder.adapter().submit(job(), MODEL, CALLBACK)


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_request"), (401, "invalid_api_key"), (402, "insufficient_balance"), (409, "idempotency_conflict")],
)
async def test_client_errors_are_permanent_with_the_providers_code(status: int, code: str) -> None:
    recorder = upstream(lambda _: httpx.Response(status, json={"error": {"code": code, "message": "no"}}))
    with pytest.raises(PermanentError) as caught:
        await recorder.adapter().submit(job(), MODEL, CALLBACK)
    assert (caught.value.provider_code, caught.value.message, caught.value.status) == (code, "no", status)


async def test_rate_limit_is_transient_with_retry_after() -> None:
    recorder = upstream(lambda _: httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"code": "x"}}))
    with pytest.raises(TransientError) as caught:
        await recorder.adapter().submit(job(), MODEL, CALLBACK)
    assert caught.value.retry_after == 3.0


async def test_lost_create_answer_is_an_unknown_outcome_resolved_by_idempotency() -> None:
    def lose(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    with pytest.raises(OutcomeUnknown):
        await upstream(lose).adapter().submit(job(), MODEL, CALLBACK)
    assert MindVideo.unknown_outcome == "idempotency"


async def test_resending_the_same_job_returns_the_original_task() -> None:
    record = job(reference_images=["https://x/1.png"], reference_audios=["https://x/a.mp3"])
    async with sandboxed() as (adapter, client):
        first = await adapter.submit(record, MODEL, CALLBACK)
        second = await adapter.submit(record, MODEL, CALLBACK)
        creates = (await client.get("/_sandbox/creates")).json()
    assert second.provider_task_id == first.provider_task_id
    assert len(creates["accepted"]) == 1
    assert creates["replayed"] == [{"id": first.provider_task_id, "idempotency_key": record.id}]


@pytest.mark.parametrize(
    "input",
    [
        {},
        {"aspect_ratio": "adaptive", "resolution": "480p", "duration": 15, "generate_audio": True, "seed": 0},
        {"watermark": False, "camera_fixed": True, "return_last_frame": True},
        {"first_frame": "https://x/a.png"},
        {"last_frame": "https://x/b.png"},
        {"first_frame": "https://x/a.png", "last_frame": "https://x/b.png"},
        {"first_frame": "https://x/a.png", "reference_images": [f"https://x/{i}.png" for i in range(8)]},
        {"reference_images": [f"https://x/{i}.png" for i in range(9)], "reference_videos": ["https://x/v.mp4"]},
        {"reference_videos": ["https://x/v.mp4"] * 3, "reference_audios": ["https://x/a.mp3"] * 3},
        {"provider_options": {"tools": [{"type": "web_search"}]}},
    ],
    ids=[
        "minimal",
        "scalars",
        "flags",
        "first",
        "last",
        "first-last",
        "frame-refs",
        "refs-video",
        "video-audio",
        "tools",
    ],
)
async def test_every_payload_the_adapter_builds_is_accepted_by_the_emulator(input: dict[str, Any]) -> None:
    async with sandboxed() as (adapter, _):
        submission = await adapter.submit(job(**input), MODEL, CALLBACK)
    assert submission.provider_task_id.startswith("task_")


# -- capabilities ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({"seed": 2147483648}, "input.seed"),
        ({"seed": -1}, "input.seed"),
        ({"resolution": "1080p"}, "input.resolution"),
        ({"aspect_ratio": "9:21"}, "input.aspect_ratio"),
        ({"duration": 3}, "input.duration"),
        ({"negative_prompt": "blur"}, "input.negative_prompt"),
        ({"first_frame": "https://x/a.png", "reference_videos": ["https://x/v.mp4"]}, "input.reference_videos"),
        ({"last_frame": "https://x/b.png", "reference_audios": ["https://x/a.mp3"]}, "input.reference_audios"),
        ({"reference_images": ["https://x/i.png"] * 10}, "input.reference_images"),
        ({"reference_videos": ["https://x/v.mp4"] * 4}, "input.reference_videos"),
    ],
)
def test_reelay_refuses_what_the_model_cannot_serve(input: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_input(MODEL, {"prompt": "p", **input})
    assert caught.value.details["field"] == field


def test_seed_range_is_int32_from_zero() -> None:
    check_input(MODEL, {"prompt": "p", "seed": 0})
    check_input(MODEL, {"prompt": "p", "seed": 2147483647})
    assert MODEL.seed_range == (0, 2147483647)


# -- status -------------------------------------------------------------------------------------------------


async def test_fetch_is_a_bearer_get_of_the_task() -> None:
    recorder = upstream(lambda _: httpx.Response(200, json={**CREATED, "status": "processing"}))
    report = await recorder.adapter().fetch("task_1")
    request = recorder.requests[0]
    assert (request.method, str(request.url)) == ("GET", f"{BASE_URL}/api/v1/tasks/task_1")
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert report.status == "processing"


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("queued", "queued"),
        ("processing", "processing"),
        ("cancelled", "cancelled"),
        ("PROCESSING", "processing"),
        ("rendering", "processing"),
        ("", "processing"),
    ],
)
def test_status_words_map_one_to_one_and_unknown_ones_keep_the_job_running(word: str, status: str) -> None:
    adapter = upstream().adapter()
    assert adapter.report({"task_id": "task_1", "status": word}).status == status


def test_succeeded_report_has_every_video_and_the_usd_costs() -> None:
    report = (
        upstream()
        .adapter()
        .report(
            {
                "request_id": "req_1",
                "task_id": "task_1",
                "status": "succeeded",
                "cost_estimate": 0.0657,
                "cost_actual": 0.0657,
                "output": {
                    "videos": [
                        {"url": "https://x/1.mp4"},
                        {"url": "https://x/2.mp4", "thumbnail_url": "https://x/2.jpg"},
                    ],
                    "last_frame_url": "https://x/last.png",
                },
            }
        )
    )
    assert report.status == "succeeded"
    assert report.provider_task_id == "task_1"
    assert report.output == {
        "videos": [
            {"url": "https://x/1.mp4", "thumbnail_url": None},
            {"url": "https://x/2.mp4", "thumbnail_url": "https://x/2.jpg"},
        ],
        "last_frame_url": "https://x/last.png",
    }
    assert report.error is None
    assert report.cost == {"usd_estimate": 0.0657, "usd_charged": 0.0657}


def test_success_without_a_video_is_a_failure() -> None:
    report = upstream().adapter().report({"task_id": "task_1", "status": "succeeded", "output": {"videos": []}})
    assert report.status == "failed"
    assert report.error == {"code": "generation_failed", "message": "the provider reported success without a video"}


@pytest.mark.parametrize(
    ("body", "provider_code", "message"),
    [
        ({"error": {"code": "content_policy", "message": "flagged"}}, "content_policy", "flagged"),
        ({"error": {"code": "timeout"}, "message": "took too long"}, "timeout", "took too long"),
        ({"error": "upstream_error", "error_message": "boom"}, "upstream_error", "boom"),
        ({}, "failed", "the provider reported failure"),
    ],
    ids=["error-object", "top-level-message", "error-string", "nothing"],
)
def test_failure_detail_is_read_defensively(body: dict[str, Any], provider_code: str, message: str) -> None:
    report = upstream().adapter().report({"task_id": "task_1", "status": "failed", "cost_actual": 0, **body})
    assert report.status == "failed"
    assert report.error == {"code": "generation_failed", "message": message, "provider_code": provider_code}
    assert report.cost == {"usd_charged": 0}


async def test_unknown_task_is_a_permanent_error() -> None:
    async with sandboxed() as (adapter, _):
        with pytest.raises(PermanentError) as caught:
            await adapter.fetch("task_missing")
    assert caught.value.provider_code == "task_not_found"


async def test_fetch_reads_a_succeeded_task_from_the_emulator() -> None:
    async with sandboxed() as (adapter, client):
        submission = await adapter.submit(job(return_last_frame=True), MODEL, CALLBACK)
        await client.post(f"/_sandbox/tasks/{submission.provider_task_id}/complete")
        report = await adapter.fetch(submission.provider_task_id)
    assert report.status == "succeeded"
    assert report.output is not None
    assert report.output["videos"][0]["url"].endswith(f"{submission.provider_task_id}.mp4")
    assert report.output["last_frame_url"]
    assert report.cost == {"usd_estimate": 0.1314, "usd_charged": 0.1314}


# -- no webhooks, no cancel, no estimate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": f"Bearer {API_KEY}"}, {"X-MindVideo-Signature": "t=1,v1=00"}]
)
def test_every_webhook_is_refused(headers: dict[str, str]) -> None:
    body = msgspec.json.encode({"task_id": "task_1", "status": "succeeded"})
    with pytest.raises(SignatureError):
        upstream().adapter().verify_webhook(headers, body, now=0.0, job=job())


def test_webhook_bodies_are_never_parsed() -> None:
    with pytest.raises(ValueError, match="no webhooks"):
        upstream().adapter().parse_webhook(b'{"task_id": "task_1", "status": "succeeded"}')


async def test_cancel_has_no_upstream_endpoint() -> None:
    recorder = upstream()
    assert await recorder.adapter().cancel("task_1") is False
    assert recorder.requests == []


def test_estimate_is_unknown_until_the_task_is_created() -> None:
    assert upstream().adapter().estimate(MODEL, {"prompt": "p", "resolution": "720p", "duration": 10}) == {}


def test_model_is_poll_only_and_polled_at_20_seconds_then_every_minute() -> None:
    rng = random.Random(1)
    assert MODEL.callbacks is False
    assert MindVideo.signs_webhooks is False
    assert 16.0 <= MindVideo.poll_schedule.delay(0, rng) <= 24.0
    assert 48.0 <= MindVideo.poll_schedule.delay(20, rng) <= 72.0
