"""The Magnific adapter: create path by resolution, named enums, status mapping, error bodies, Standard Webhooks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing import SignatureError
from reelay_signing.standard import sign_headers
from sandbox.knobs import SandboxKnobs
from sandbox.magnific import create_magnific_sandbox
from sandbox.media import result_path
from service.capabilities import check_for, check_input
from service.errors import ConfigError, InvalidRequest
from service.providers.base import OutcomeUnknown, PermanentError, TransientError, WebhookNotice
from service.providers.magnific import MODEL, Magnific
from service.settings import ProviderSettings
from storage import JobRecord
from tests.providers.recording import Answer, Recorder
from tests.storage.factories import make_job

BASE_URL = "https://api.magnific.com"
API_KEY = "magnific_sandbox_key"
SECRET = "whsec_bWFnbmlmaWMtc2FuZGJveC1zZWNyZXQ="
SETTINGS = ProviderSettings(base_url=BASE_URL, api_key=API_KEY, webhook_secrets=(SECRET,))
CALLBACK = "http://reelay.test/webhooks/magnific"
TASK_ID = "046b6c7f-0b8a-43b9-b35d-6489e6daee91"
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
CREATED = {"data": {"generated": [], "task_id": TASK_ID, "status": "CREATED"}}
VIDEO = "https://cdn.example/v.mp4"


def job(**input: Any) -> JobRecord:
    return make_job(model=MODEL.id, provider="magnific", input={"prompt": "a drone shot of waves", **input})


def adapter(settings: ProviderSettings = SETTINGS) -> Magnific:
    return Magnific(settings, httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(500))))


def upstream(answer: Answer | None = None) -> Recorder[Magnific]:
    """A recording upstream that answers every request with `answer`, by default a created task."""
    return Recorder(Magnific, SETTINGS, answer or (lambda _: httpx.Response(200, json=CREATED)))


def answering(status: int, body: Any, **headers: str) -> Recorder[Magnific]:
    return upstream(lambda _: httpx.Response(status, json=body, headers=headers))


async def sent_body(settings: ProviderSettings = SETTINGS, **input: Any) -> dict[str, Any]:
    recorder = upstream()
    await recorder.adapter(settings).submit(job(**input), MODEL, CALLBACK)
    return recorder.sent()


@asynccontextmanager
async def sandboxed(knobs: SandboxKnobs = SLOW) -> AsyncIterator[tuple[Magnific, httpx.AsyncClient]]:
    """The adapter wired to the emulator in-process, plus a client for the emulator's control endpoints."""
    app = create_magnific_sandbox(knobs=knobs)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield Magnific(SETTINGS, client), client


def signed(body: bytes, secret: str | bytes = SECRET, at: float | None = None) -> dict[str, str]:
    return sign_headers(body, secret, msg_id="msg_1", timestamp=int(time.time() if at is None else at))


def parse(payload: Any) -> WebhookNotice:
    return adapter().parse_webhook(msgspec.json.encode(payload))


# -- capabilities -----------------------------------------------------------------------------------------


def test_model_offers_five_or_ten_seconds_at_480p_or_720p_and_named_ratios_without_adaptive() -> None:
    assert MODEL.id == "magnific/seedance-2-mini"
    assert MODEL.durations == (5, 10)
    assert MODEL.resolutions == ("480p", "720p")
    assert MODEL.default_resolution == "720p"
    assert MODEL.aspect_ratios == ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21")
    assert MODEL.seed_range == (-1, 4294967295)
    assert MODEL.audio is False
    assert MODEL.callbacks is True


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"duration": 7}, "input.duration"),
        ({"duration": 15}, "input.duration"),
        ({"aspect_ratio": "adaptive"}, "input.aspect_ratio"),
        ({"resolution": "1080p"}, "input.resolution"),
        ({"generate_audio": True}, "input.generate_audio"),
        ({"seed": -2}, "input.seed"),
        ({"seed": 2**32}, "input.seed"),
        ({"reference_images": ["https://x/1.png"]}, "input.reference_images"),
        ({"reference_videos": ["https://x/1.mp4"]}, "input.reference_videos"),
        ({"negative_prompt": "blur"}, "input.negative_prompt"),
        ({"watermark": True}, "input.watermark"),
    ],
)
def test_capabilities_refuse_what_mini_cannot_serve(given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_input(MODEL, {"prompt": "waves", **given})
    assert refused.value.details["field"] == field


def test_capabilities_accept_every_documented_input() -> None:
    given = {
        "prompt": "waves",
        "duration": 10,
        "resolution": "480p",
        "aspect_ratio": "9:21",
        "generate_audio": False,
        "seed": 4294967295,
        "camera_fixed": True,
        "first_frame": "https://x/a.png",
        "last_frame": "https://x/b.png",
    }
    check_input(MODEL, given)
    assert adapter().estimate(MODEL, given) == {}


def test_prompt_over_2000_characters_is_refused_before_sending() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_for(MODEL, adapter(), {"prompt": "x" * 2001})
    assert refused.value.details["field"] == "input.prompt"


def test_last_frame_without_first_frame_is_refused_before_sending() -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_input(MODEL, {"prompt": "waves", "last_frame": "https://x/b.png"})
    assert refused.value.details["field"] == "input.last_frame"
    assert refused.value.details["allowed"] == ["first_frame"]


# -- create -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "path"),
    [
        ({}, "/v1/ai/video/seedance-2-mini-720p"),
        ({"resolution": "720p"}, "/v1/ai/video/seedance-2-mini-720p"),
        ({"resolution": "480p"}, "/v1/ai/video/seedance-2-mini-480p"),
    ],
)
async def test_create_posts_to_the_path_named_by_the_resolution(resolution: dict[str, str], path: str) -> None:
    recorder = upstream()
    submission = await recorder.adapter().submit(job(**resolution), MODEL, CALLBACK)
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("POST", path)
    assert "resolution" not in recorder.sent()
    assert submission.provider_task_id == TASK_ID


async def test_create_authenticates_with_x_magnific_api_key_only() -> None:
    recorder = upstream()
    await recorder.adapter().submit(job(), MODEL, CALLBACK)
    headers = recorder.requests[0].headers
    assert headers["x-magnific-api-key"] == API_KEY
    assert "authorization" not in headers
    assert "x-freepik-api-key" not in headers
    assert headers["content-type"] == "application/json"


async def test_create_body_uses_magnific_names_and_defaults_explicitly() -> None:
    assert await sent_body() == {
        "prompt": "a drone shot of waves",
        "duration": 5,
        "aspect_ratio": "widescreen_16_9",
        "webhook_url": CALLBACK,
    }


@pytest.mark.parametrize(
    ("ratio", "named"),
    [
        ("16:9", "widescreen_16_9"),
        ("9:16", "social_story_9_16"),
        ("1:1", "square_1_1"),
        ("4:3", "classic_4_3"),
        ("3:4", "traditional_3_4"),
        ("21:9", "film_horizontal_21_9"),
        ("9:21", "film_vertical_9_21"),
    ],
)
async def test_aspect_ratios_are_sent_as_named_enums(ratio: str, named: str) -> None:
    assert (await sent_body(aspect_ratio=ratio))["aspect_ratio"] == named


async def test_frames_seed_and_camera_map_to_magnific_fields() -> None:
    body = await sent_body(
        duration=10, seed=-1, camera_fixed=True, first_frame="https://x/a.png", last_frame="https://x/b.png"
    )
    assert body == {
        "prompt": "a drone shot of waves",
        "duration": 10,
        "aspect_ratio": "widescreen_16_9",
        "seed": -1,
        "camera_fixed": True,
        "image": "https://x/a.png",
        "image_end": "https://x/b.png",
        "webhook_url": CALLBACK,
    }


async def test_data_uri_frames_are_sent_as_bare_base64() -> None:
    body = await sent_body(first_frame="data:image/png;base64,aSDinaTvuI8=", last_frame="https://x/b.png")
    assert (body["image"], body["image_end"]) == ("aSDinaTvuI8=", "https://x/b.png")


@pytest.mark.parametrize(("option", "sent"), [("false", False), ("TRUE", True), ("0", False)])
async def test_safety_checker_is_sent_when_configured(option: str, sent: bool) -> None:
    settings = msgspec.structs.replace(SETTINGS, options={"enable_safety_checker": option})
    assert (await sent_body(settings))["enable_safety_checker"] is sent


def test_safety_checker_option_that_is_not_a_boolean_stops_startup() -> None:
    with pytest.raises(ConfigError, match="REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER"):
        adapter(msgspec.structs.replace(SETTINGS, options={"enable_safety_checker": "maybe"}))


async def test_provider_options_cannot_redirect_the_webhook() -> None:
    body = await sent_body(provider_options={"enable_safety_checker": False, "webhook_url": "https://evil.test"})
    assert body["enable_safety_checker"] is False
    assert body["webhook_url"] == CALLBACK


def test_safety_checker_the_operator_set_is_refused_in_provider_options_naming_the_setting() -> None:
    configured = adapter(msgspec.structs.replace(SETTINGS, options={"enable_safety_checker": "true"}))
    with pytest.raises(InvalidRequest, match="REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER") as refused:
        check_for(MODEL, configured, {"prompt": "x", "provider_options": {"enable_safety_checker": False}})
    assert refused.value.details["use"] == ["REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER"]


async def test_safety_checker_the_operator_set_wins_over_a_stored_provider_option() -> None:
    configured = msgspec.structs.replace(SETTINGS, options={"enable_safety_checker": "true"})
    assert (await sent_body(configured, provider_options={"enable_safety_checker": False}))["enable_safety_checker"]


async def test_sandbox_accepts_what_the_adapter_sends() -> None:
    async with sandboxed() as (magnific, control):
        record = job(
            resolution="480p", aspect_ratio="9:21", duration=10, seed=42, camera_fixed=False,
            first_frame="data:image/png;base64,aSDinaTvuI8=", last_frame="https://x/b.png",
        )  # fmt: skip
        submission = await magnific.submit(record, MODEL, CALLBACK)
        creates = (await control.get("/_sandbox/creates")).json()["accepted"]
    assert creates[0]["task_id"] == submission.provider_task_id
    assert creates[0]["resolution"] == "480p"


async def test_validation_problem_becomes_a_permanent_error_naming_the_parameter() -> None:
    problem = {"problem": {"message": "Your request has invalid parameters", "invalid_params": [
        {"name": "duration", "reason": "must be 5 or 10"}
    ]}}  # fmt: skip
    with pytest.raises(PermanentError) as refused:
        await answering(400, problem).adapter().submit(job(), MODEL, CALLBACK)
    assert refused.value.message == "Your request has invalid parameters (duration: must be 5 or 10)"
    assert refused.value.status == 400


async def test_flat_problem_body_is_read_too() -> None:
    flat = {"message": "Your request has invalid parameters", "invalid_params": [{"name": "seed", "reason": "max"}]}
    with pytest.raises(PermanentError, match=r"\(seed: max\)"):
        await answering(400, flat).adapter().submit(job(), MODEL, CALLBACK)


async def test_wrong_key_is_a_permanent_error_with_the_provider_message() -> None:
    with pytest.raises(PermanentError) as refused:
        await answering(401, {"message": "Invalid API key"}).adapter().submit(job(), MODEL, CALLBACK)
    assert refused.value.message == "Invalid API key"


async def test_rate_limit_waits_at_least_the_refill_interval() -> None:
    with pytest.raises(TransientError) as limited:
        await answering(429, {"message": "Rate limit exceeded"}).adapter().submit(job(), MODEL, CALLBACK)
    assert limited.value.retry_after == 1.2
    assert limited.value.maybe_sent is False


async def test_server_error_on_create_is_a_refusal_that_may_be_resent() -> None:
    with pytest.raises(TransientError) as failed:
        await (
            answering(503, {"message": "Service Unavailable. Please try again later."})
            .adapter()
            .submit(job(), MODEL, CALLBACK)
        )
    assert "Service Unavailable" in str(failed.value)
    assert failed.value.maybe_sent is False


async def test_lost_create_answer_is_an_unknown_outcome_and_is_not_looked_up() -> None:
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    magnific = upstream(lost).adapter()
    with pytest.raises(OutcomeUnknown):
        await magnific.submit(job(), MODEL, CALLBACK)
    assert Magnific.unknown_outcome == "fail"
    assert await magnific.find_submission(job()) is None


async def test_there_is_no_upstream_cancel() -> None:
    recorder = upstream()
    assert await recorder.adapter().cancel(TASK_ID) is False
    assert recorder.requests == []


# -- status -------------------------------------------------------------------------------------------------


async def test_fetch_uses_the_status_path_without_resolution() -> None:
    recorder = answering(200, {"data": {"task_id": TASK_ID, "status": "IN_PROGRESS", "generated": []}})
    report = await recorder.adapter().fetch(TASK_ID)
    request = recorder.requests[0]
    assert (request.method, request.url.path) == ("GET", f"/v1/ai/video/seedance-2-mini/{TASK_ID}")
    assert request.headers["x-magnific-api-key"] == API_KEY
    assert (report.status, report.provider_task_id) == ("processing", TASK_ID)


async def test_fetch_follows_the_sandbox_task_to_completion() -> None:
    async with sandboxed() as (magnific, control):
        submission = await magnific.submit(job(resolution="480p"), MODEL, CALLBACK)
        before = await magnific.fetch(submission.provider_task_id)
        await control.post(f"/_sandbox/tasks/{submission.provider_task_id}/complete")
        after = await magnific.fetch(submission.provider_task_id)
    assert before.status == "queued"
    assert after.status == "succeeded"
    assert after.output is not None
    [video] = after.output["videos"]
    assert (result_path(video["url"]), video["thumbnail_url"]) == (f"480p/{submission.provider_task_id}.mp4", None)
    assert after.output["last_frame_url"] is None


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("CREATED", "queued"),
        ("IN_PROGRESS", "processing"),
        ("in_progress", "processing"),
        ("Created", "queued"),
        ("FAILED", "failed"),
        ("failed", "failed"),
        ("RETRYING", "processing"),
    ],
)
def test_status_words_are_read_case_insensitively(word: str, status: str) -> None:
    assert adapter().report({"task_id": TASK_ID, "status": word, "generated": []}).status == status


def test_completed_lists_every_generated_video() -> None:
    report = adapter().report({"task_id": TASK_ID, "status": "completed", "generated": [VIDEO, "https://x/2.mp4"]})
    assert report.status == "succeeded"
    assert report.output == {
        "videos": [{"url": VIDEO, "thumbnail_url": None}, {"url": "https://x/2.mp4", "thumbnail_url": None}],
        "last_frame_url": None,
    }
    assert report.error is None


@pytest.mark.parametrize("generated", [[], [""], None])
def test_completed_without_a_video_is_failed(generated: Any) -> None:
    report = adapter().report({"task_id": TASK_ID, "status": "COMPLETED", "generated": generated})
    assert report.status == "failed"
    assert report.output is None
    assert report.error == {
        "code": "generation_failed",
        "message": "the provider reported completion without a video",
        "provider_code": "COMPLETED",
    }


def test_failed_says_the_provider_gave_no_reason() -> None:
    report = adapter().report({"task_id": TASK_ID, "status": "FAILED", "generated": []})
    assert report.error == {
        "code": "generation_failed",
        "message": "the provider reported failure and gave no reason",
        "provider_code": "FAILED",
    }
    assert report.cost is None


async def test_status_answer_without_data_is_not_understood() -> None:
    with pytest.raises(ValueError, match="data"):
        await answering(200, {"task_id": TASK_ID, "status": "COMPLETED"}).adapter().fetch(TASK_ID)


# -- webhooks -----------------------------------------------------------------------------------------------


def test_webhook_signed_with_the_whsec_secret_verifies() -> None:
    body = b'{"task_id":"t","status":"COMPLETED","generated":[]}'
    adapter().verify_webhook(signed(body), body, now=time.time(), job=None)


def test_webhook_signed_with_the_whsec_text_itself_verifies() -> None:
    body = b'{"task_id":"t","status":"COMPLETED","generated":[]}'
    # Freepik's docs sign with the secret's UTF-8 bytes; for a whsec_ secret that reading is tried too (trap 38).
    adapter().verify_webhook(signed(body, SECRET.encode()), body, now=time.time(), job=None)


def test_raw_secret_is_used_as_its_utf8_bytes() -> None:
    body = b'{"task_id":"t","status":"FAILED","generated":[]}'
    settings = msgspec.structs.replace(SETTINGS, webhook_secrets=("dashboard-secret",))
    adapter(settings).verify_webhook(signed(body, b"dashboard-secret"), body, now=time.time(), job=None)


def test_any_configured_secret_verifies_during_a_rotation() -> None:
    body = b'{"task_id":"t","status":"FAILED","generated":[]}'
    settings = msgspec.structs.replace(SETTINGS, webhook_secrets=("new-secret", SECRET))
    adapter(settings).verify_webhook(signed(body), body, now=time.time(), job=None)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_secret", "signature_mismatch"),
        ("tampered", "signature_mismatch"),
        ("stale", "timestamp_too_old"),
        ("future", "timestamp_in_future"),
        ("unsigned", "missing_header"),
    ],
)
def test_webhook_that_is_not_authentic_is_refused(case: str, reason: str) -> None:
    body = b'{"task_id":"t","status":"COMPLETED","generated":[]}'
    now = time.time()
    headers = {
        "wrong_secret": signed(body, "whsec_b3RoZXI="),
        "tampered": signed(b'{"task_id":"t","status":"FAILED","generated":[]}'),
        "stale": signed(body, at=now - 301),
        "future": signed(body, at=now + 301),
        "unsigned": {},
    }[case]
    with pytest.raises(SignatureError) as refused:
        adapter().verify_webhook(headers, body, now=now, job=None)
    assert refused.value.reason == reason


def test_tolerance_comes_from_settings() -> None:
    body = b'{"task_id":"t","status":"COMPLETED","generated":[]}'
    now = time.time()
    settings = msgspec.structs.replace(SETTINGS, webhook_tolerance_seconds=10)
    with pytest.raises(SignatureError, match="older"):
        adapter(settings).verify_webhook(signed(body, at=now - 30), body, now=now, job=None)


def test_without_a_secret_no_webhook_is_trusted() -> None:
    body = b'{"task_id":"t","status":"COMPLETED","generated":[]}'
    settings = msgspec.structs.replace(SETTINGS, webhook_secrets=())
    with pytest.raises(SignatureError) as refused:
        adapter(settings).verify_webhook(signed(body), body, now=time.time(), job=None)
    assert refused.value.reason == "signing_not_configured"


@pytest.mark.parametrize(
    "payload",
    [
        {"task_id": TASK_ID, "status": "COMPLETED", "generated": [VIDEO]},
        {"data": {"task_id": TASK_ID, "status": "COMPLETED", "generated": [VIDEO]}},
        {"task_id": TASK_ID, "request_id": "r", "status": "completed", "generated": [VIDEO]},
    ],
    ids=["unwrapped", "wrapped", "extra-field-lowercase"],
)
def test_webhook_body_is_read_wrapped_or_not(payload: dict[str, Any]) -> None:
    notice = parse(payload)
    assert notice.provider_task_id == TASK_ID
    assert notice.receipt_key == f"{TASK_ID}:COMPLETED"
    assert notice.report.status == "succeeded"
    assert notice.report.output == {"videos": [{"url": VIDEO, "thumbnail_url": None}], "last_frame_url": None}
    assert notice.job_id is None


def test_each_status_of_a_task_has_its_own_receipt() -> None:
    keys = {parse({"task_id": TASK_ID, "status": s, "generated": []}).receipt_key for s in ("IN_PROGRESS", "FAILED")}
    assert keys == {f"{TASK_ID}:IN_PROGRESS", f"{TASK_ID}:FAILED"}


@pytest.mark.parametrize("payload", [{"status": "COMPLETED"}, {"task_id": TASK_ID}, {"data": []}, [], "COMPLETED"])
def test_webhook_body_without_task_or_status_is_not_understood(payload: Any) -> None:
    with pytest.raises(ValueError, match="Magnific"):
        parse(payload)


@pytest.mark.parametrize(
    ("payload", "confirm"),
    [
        ({"task_id": TASK_ID, "status": "COMPLETED"}, True),
        ({"task_id": TASK_ID, "status": "COMPLETED", "generated": []}, True),
        ({"task_id": TASK_ID, "status": "COMPLETED", "generated": [VIDEO]}, False),
        ({"task_id": TASK_ID, "status": "IN_PROGRESS", "generated": []}, False),
        ({"task_id": TASK_ID, "status": "FAILED", "generated": []}, False),
    ],
)
def test_only_a_completion_without_video_is_confirmed_by_polling(payload: dict[str, Any], confirm: bool) -> None:
    assert adapter().needs_confirmation(parse(payload), job()) is confirm
