"""The imini adapter: the exact request it sends, how it reads answers and errors, and what it refuses."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing import SignatureError
from sandbox.imini import create_imini_sandbox
from sandbox.knobs import SandboxKnobs
from service import lifecycle
from service.capabilities import check_for, check_input
from service.errors import InvalidRequest
from service.providers import all_models
from service.providers.base import PermanentError, TransientError
from service.providers.imini import SPEC, Imini
from service.settings import ProviderSettings
from storage import JobRecord

KEY = "sk-imini-sandbox"
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
DONE = SandboxKnobs(processing_after_s=0, complete_after_s=0)
TASK_ID = "task_2044275355061448704"
IMAGE = "https://cdn.example.com/a.png"
VIDEO = "https://cdn.example.com/clip.mp4"
AUDIO = "https://cdn.example.com/beat.mp3"

Handler = Callable[[httpx.Request], httpx.Response]


def job(**input: Any) -> JobRecord:
    given = {"prompt": "a drone shot of waves", **input}
    return lifecycle.new_job(
        job_id="job_01JZ8B7Q4X8K2P9W3M5C6N7R8S",
        api_key_id="key_a",
        model=SPEC.id,
        provider="imini",
        input=given,
        metadata={},
        cost={},
        callback_token="token",
        now=time.time(),
        timeout=3600,
    )


def adapter_for(client: httpx.AsyncClient, base_url: str) -> Imini:
    return Imini(ProviderSettings(base_url=base_url, api_key=KEY), client)


@asynccontextmanager
async def against_sandbox(knobs: SandboxKnobs = SLOW, **options: Any) -> AsyncIterator[tuple[Imini, httpx.AsyncClient]]:
    """The adapter talking to the emulator in-process; the second client reads the emulator's control endpoints."""
    app = create_imini_sandbox(api_key=KEY, knobs=knobs, **options)
    # Litestar's precise ASGI types do not match httpx's loose ones; the app is a plain ASGI callable.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://imini.sandbox") as client:
        yield adapter_for(client, "http://imini.sandbox"), client


@asynccontextmanager
async def against(handler: Handler) -> AsyncIterator[Imini]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield adapter_for(client, Imini.default_base_url)


def task(**body: Any) -> Handler:
    """A status endpoint answering 200 with this body."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    return handle


async def sent_body(sandbox: httpx.AsyncClient) -> dict[str, Any]:
    accepted = (await sandbox.get("/_sandbox/creates")).json()["accepted"]
    assert len(accepted) == 1
    body: dict[str, Any] = accepted[0]["body"]
    return body


@pytest.fixture
async def adapter() -> AsyncIterator[Imini]:
    """An adapter for checks that send nothing."""
    async with httpx.AsyncClient() as client:
        yield adapter_for(client, Imini.default_base_url)


# -- the request ----------------------------------------------------------------------------------------


async def test_create_goes_to_the_router_path_with_bearer_auth_and_no_callback() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"task_id": TASK_ID, "model": "doubao/seedance-2.0"})

    async with against(handle) as adapter:
        await adapter.submit(job(), SPEC, "https://reelay.example/webhooks/imini/job_x/token")
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://openapi.imini.ai/imini/router/v1/videos/generate"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert b"webhooks" not in request.content


async def test_minimal_job_sends_uppercase_resolution_and_explicit_audio() -> None:
    async with against_sandbox() as (adapter, sandbox):
        await adapter.submit(job(), SPEC, None)
        body = await sent_body(sandbox)
    assert body == {
        "model": "doubao/seedance-2.0",
        "prompt": "a drone shot of waves",
        "resolution": "720P",
        "aspect_ratio": "adaptive",
        "duration": 5,
        "generate_audio": False,
    }


async def test_seed_watermark_and_last_frame_are_nested_under_extra_params() -> None:
    given = {"resolution": "480p", "aspect_ratio": "21:9", "duration": 12, "generate_audio": True}
    extras = {"seed": 4294967295, "watermark": True, "return_last_frame": True}
    async with against_sandbox() as (adapter, sandbox):
        await adapter.submit(job(**given, **extras), SPEC, None)
        body = await sent_body(sandbox)
    assert body["resolution"] == "480P"
    assert (body["aspect_ratio"], body["duration"], body["generate_audio"]) == ("21:9", 12, True)
    assert body["extra_params"] == extras
    assert not set(extras) & set(body)


async def test_first_and_last_frames_become_typed_reference_images() -> None:
    async with against_sandbox() as (adapter, sandbox):
        await adapter.submit(job(first_frame=IMAGE, last_frame="data:image/png;base64,iVBORw0KGgo="), SPEC, None)
        body = await sent_body(sandbox)
    assert body["reference_images"] == [
        {"url": IMAGE, "reference_type": "first_frame"},
        {"url": "data:image/png;base64,iVBORw0KGgo=", "reference_type": "last_frame"},
    ]


async def test_reference_assets_videos_and_audios_become_url_objects() -> None:
    given = {"reference_images": [IMAGE, IMAGE], "reference_videos": [VIDEO], "reference_audios": [AUDIO]}
    async with against_sandbox() as (adapter, sandbox):
        await adapter.submit(job(**given), SPEC, None)
        body = await sent_body(sandbox)
    assert body["reference_images"] == [{"url": IMAGE, "reference_type": "asset"}] * 2
    assert body["reference_videos"] == [{"url": VIDEO}]
    assert body["reference_audios"] == [{"url": AUDIO}]


async def test_provider_options_of_a_job_stored_before_the_check_never_override_the_body() -> None:
    options = {"prompt": "overridden", "duration": 15, "extra_params": {"seed": 7}}
    async with against_sandbox() as (adapter, sandbox):
        await adapter.submit(job(watermark=False, provider_options=options), SPEC, None)
        body = await sent_body(sandbox)
    assert (body["prompt"], body["duration"]) == ("a drone shot of waves", 5)
    assert body["extra_params"] == {"watermark": False}


# -- the create answer ------------------------------------------------------------------------------------


async def test_task_id_is_kept_as_the_exact_string() -> None:
    async with against_sandbox() as (adapter, sandbox):
        submission = await adapter.submit(job(), SPEC, None)
        accepted = (await sandbox.get("/_sandbox/creates")).json()["accepted"]
    assert submission.provider_task_id == accepted[0]["task_id"]
    assert submission.cost is None


async def test_a_numeric_task_id_is_refused_rather_than_converted() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"task_id": 2044275355061448704}')

    async with against(handle) as adapter:
        with pytest.raises(ValueError, match="task_id"):
            await adapter.submit(job(), SPEC, None)


# -- status -------------------------------------------------------------------------------------------------


async def test_fetch_reads_queued_from_the_task_path() -> None:
    async with against_sandbox() as (adapter, sandbox):
        submission = await adapter.submit(job(), SPEC, None)
        report = await adapter.fetch(submission.provider_task_id)
        [task] = (await sandbox.get("/_sandbox/tasks")).json()["tasks"]
    assert report.status == "queued"
    assert report.provider_task_id == submission.provider_task_id
    assert task["polls"] == 1


async def test_fetch_reads_processing() -> None:
    async with against_sandbox(SandboxKnobs(processing_after_s=0, complete_after_s=60)) as (adapter, _):
        submission = await adapter.submit(job(), SPEC, None)
        report = await adapter.fetch(submission.provider_task_id)
    assert report.status == "processing"
    assert report.output is report.error is None


async def test_succeeded_task_gives_video_and_cover_as_thumbnail() -> None:
    async with against_sandbox(DONE) as (adapter, _):
        submission = await adapter.submit(job(), SPEC, None)
        report = await adapter.fetch(submission.provider_task_id)
    assert report.status == "succeeded"
    assert report.output is not None
    [video] = report.output["videos"]
    assert video["url"].endswith(f"/{submission.provider_task_id}.mp4")
    assert video["thumbnail_url"].endswith(f"/{submission.provider_task_id}.jpg")
    assert report.output["last_frame_url"] is None


@pytest.mark.parametrize("placement", ["video", "top"])
async def test_last_frame_is_read_on_the_video_or_at_the_top(placement: str) -> None:
    async with against_sandbox(DONE, last_frame_placement=placement) as (adapter, _):
        submission = await adapter.submit(job(return_last_frame=True), SPEC, None)
        report = await adapter.fetch(submission.provider_task_id)
    assert report.output is not None
    assert report.output["last_frame_url"].endswith(f"/{submission.provider_task_id}.png")


async def test_every_video_is_kept() -> None:
    videos = [{"url": "https://v/1.mp4", "cover_url": "https://v/1.jpg"}, {"url": "https://v/2.mp4"}]
    async with against(task(task_id=TASK_ID, status="succeeded", videos=videos, error=None)) as adapter:
        report = await adapter.fetch(TASK_ID)
    assert report.output == {
        "videos": [
            {"url": "https://v/1.mp4", "thumbnail_url": "https://v/1.jpg"},
            {"url": "https://v/2.mp4", "thumbnail_url": None},
        ],
        "last_frame_url": None,
    }


async def test_success_without_a_video_is_a_failure() -> None:
    async with against(task(task_id=TASK_ID, status="succeeded", videos=None, error=None)) as adapter:
        report = await adapter.fetch(TASK_ID)
    assert report.status == "failed"
    assert report.error is not None
    assert report.error["code"] == "generation_failed"


async def test_failed_task_keeps_provider_code_and_request_id() -> None:
    async with against_sandbox(SandboxKnobs(processing_after_s=0, complete_after_s=0, failure_rate=1.0)) as (
        adapter,
        sandbox,
    ):
        submission = await adapter.submit(job(), SPEC, None)
        report = await adapter.fetch(submission.provider_task_id)
        raw = await sandbox.get(f"/v1/videos/tasks/{submission.provider_task_id}", headers=adapter.auth_headers())
    upstream = raw.json()["error"]
    assert report.status == "failed"
    assert report.output is None
    assert report.error == {
        "code": "generation_failed",
        "message": f"{upstream['message']} (imini request_id {upstream['request_id']})",
        "provider_code": "GENERATION_FAILED",
    }


async def test_an_unknown_status_word_keeps_the_job_processing() -> None:
    async with against(task(task_id=TASK_ID, status="running", videos=None, error=None)) as adapter:
        report = await adapter.fetch(TASK_ID)
    assert report.status == "processing"


# -- errors -------------------------------------------------------------------------------------------------


async def test_refused_create_is_permanent_with_imini_code_and_request_id() -> None:
    # A duration outside 4-15, which Reelay's own check would have refused before sending.
    async with against_sandbox() as (adapter, _):
        with pytest.raises(PermanentError) as caught:
            await adapter.submit(job(duration=3), SPEC, None)
    assert caught.value.provider_code == "INVALID_PARAMETER"
    assert caught.value.status == 400
    assert "imini request_id " in caught.value.message


async def test_exhausted_credits_are_permanent() -> None:
    async with against_sandbox(task_quota=0) as (adapter, _):
        with pytest.raises(PermanentError) as caught:
            await adapter.submit(job(), SPEC, None)
    assert (caught.value.status, caught.value.provider_code) == (403, "INSUFFICIENT_CREDITS")


async def test_unknown_task_is_permanent_task_not_found() -> None:
    async with against_sandbox() as (adapter, _):
        with pytest.raises(PermanentError) as caught:
            await adapter.fetch("task_1000000000000000000")
    assert caught.value.provider_code == "TASK_NOT_FOUND"


async def test_429_waits_at_least_five_seconds() -> None:
    async with against_sandbox(SandboxKnobs(burst_429=1)) as (adapter, _):
        with pytest.raises(TransientError) as caught:
            await adapter.fetch(TASK_ID)
    assert caught.value.retry_after == 5.0


@pytest.mark.parametrize(("header", "expected"), [("1", 5.0), ("12", 12.0)])
async def test_429_retry_after_is_floored_at_five_seconds(header: str, expected: float) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": header}, json={"error": {"code": "RATE_LIMITED"}})

    async with against(handle) as adapter:
        with pytest.raises(TransientError) as caught:
            await adapter.fetch(TASK_ID)
    assert caught.value.retry_after == expected


async def test_5xx_on_create_is_a_refusal_that_may_be_resent() -> None:
    async with against_sandbox(SandboxKnobs(burst_5xx=1)) as (adapter, sandbox):
        with pytest.raises(TransientError) as caught:
            await adapter.submit(job(), SPEC, None)
        creates = (await sandbox.get("/_sandbox/creates")).json()
    assert caught.value.maybe_sent is False
    assert "INTERNAL_ERROR" in str(caught.value)
    assert creates["accepted"] == []


# -- webhooks, capabilities, estimate --------------------------------------------------------------------


def test_every_webhook_is_refused(adapter: Imini) -> None:
    body = json.dumps({"task_id": TASK_ID, "status": "succeeded"}).encode()
    with pytest.raises(SignatureError) as caught:
        adapter.verify_webhook({}, body, now=time.time(), job=job())
    assert caught.value.reason == "signing_not_configured"


def test_model_is_registered_under_its_two_slash_id() -> None:
    spec = all_models()["imini/doubao/seedance-2.0"]
    assert (spec.provider, spec.upstream_model) == ("imini", "doubao/seedance-2.0")
    assert spec.resolutions == ("480p", "720p")
    assert spec.seed_range == (-1, 4294967295)
    assert spec.callbacks is False
    assert spec.price is not None
    assert spec.price.per_second == {}
    assert spec.price.note


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"resolution": "1080p"}, "input.resolution"),
        ({"aspect_ratio": "9:21"}, "input.aspect_ratio"),
        ({"duration": 16}, "input.duration"),
        ({"seed": -2}, "input.seed"),
        ({"seed": 2**32}, "input.seed"),
        ({"negative_prompt": "blurry"}, "input.negative_prompt"),
        ({"camera_fixed": True}, "input.camera_fixed"),
        ({"reference_images": [IMAGE] * 10}, "input.reference_images"),
        ({"reference_videos": [VIDEO] * 4}, "input.reference_videos"),
        ({"first_frame": IMAGE, "reference_images": [IMAGE]}, "input.reference_images"),
        ({"first_frame": IMAGE, "reference_videos": [VIDEO]}, "input.reference_videos"),
        ({"first_frame": IMAGE, "reference_audios": [AUDIO]}, "input.reference_audios"),
    ],
)
def test_capabilities_refuse_what_imini_cannot_do(given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_input(SPEC, {"prompt": "x", **given})
    assert caught.value.details["field"] == field


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"last_frame": IMAGE}, "input.last_frame"),
        ({"reference_audios": [AUDIO]}, "input.reference_audios"),
        ({"reference_videos": ["data:video/mp4;base64,AAAA"]}, "input.reference_videos"),
    ],
)
def test_one_way_rules_are_refused_before_sending(adapter: Imini, given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_for(SPEC, adapter, {"prompt": "x", **given})
    assert caught.value.details["field"] == field
    assert SPEC.id in caught.value.message


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"first_frame": IMAGE, "last_frame": IMAGE},
        {"reference_images": [IMAGE], "reference_audios": [AUDIO]},
        {"reference_videos": [VIDEO], "reference_audios": [AUDIO]},
    ],
)
def test_estimate_is_empty_for_what_imini_accepts(adapter: Imini, given: dict[str, Any]) -> None:
    assert adapter.estimate(SPEC, msgspec.to_builtins({"prompt": "x", **given})) == {}
