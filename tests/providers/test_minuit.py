"""Contract tests of the Minuit adapter against its emulator: paths, auth, field names, states, errors, cost."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing import SignatureError
from sandbox import SANDBOXES
from sandbox.knobs import SandboxKnobs
from sandbox.media import result_path
from sandbox.minuit import create_minuit_sandbox
from service.capabilities import check_for, check_input
from service.errors import InvalidRequest
from service.lifecycle import new_job
from service.providers import ADAPTERS, all_models
from service.providers.base import ModelSpec, OutcomeUnknown, PermanentError, TransientError
from service.providers.minuit import Minuit
from service.settings import ProviderSettings
from storage import JobRecord

BASE_URL = "https://seedance2.lol"
API_KEY = SANDBOXES["minuit"].api_key
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
HQ = all_models()["minuit/high_quality"]
WAN = all_models()["minuit/wan2.7-i2v-spicy"]
IMAGE = "https://example.com/first-frame.jpg"
CALLBACK = "https://reelay.example.com/webhooks/minuit/job_01JZ0000000000000000000000/tok"


def settings(**options: str) -> ProviderSettings:
    return ProviderSettings(base_url=BASE_URL, api_key=API_KEY, options=options)


CONFIGURED = settings(moderation="disabled")


def job(spec: ModelSpec, task_id: str | None = None, **input: Any) -> JobRecord:
    record = new_job(
        job_id="job_01JZ0000000000000000000000",
        api_key_id="key",
        model=spec.id,
        provider="minuit",
        input={"prompt": "Slow push-in", **input},
        metadata={},
        cost={},
        callback_token="tok",
        now=0.0,
        timeout=3600.0,
    )
    return msgspec.structs.replace(record, provider_task_id=task_id)


@dataclass
class Rig:
    adapter: Minuit
    sent: list[httpx.Request]
    control: httpx.AsyncClient

    async def creates(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.control.get("/_sandbox/creates")).json()
        return result


@asynccontextmanager
async def rig(
    provider: ProviderSettings = CONFIGURED, knobs: SandboxKnobs = SLOW, **sandbox: Any
) -> AsyncIterator[Rig]:
    """The adapter talking to the emulator in-process, with every request it sends recorded."""
    app = create_minuit_sandbox(knobs=knobs, **sandbox)
    asgi = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        await request.aread()
        sent.append(request)
        return await asgi.handle_async_request(request)

    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.MockTransport(record)) as client,
        httpx.AsyncClient(transport=asgi, base_url=BASE_URL) as control,
    ):
        yield Rig(adapter=Minuit(provider, client), sent=sent, control=control)


# -- registration and capabilities ---------------------------------------------------------------------


def test_both_model_ids_are_registered_with_the_documented_limits() -> None:
    assert ADAPTERS["minuit"] is Minuit
    assert [spec.id for spec in Minuit.models] == ["minuit/high_quality", "minuit/wan2.7-i2v-spicy"]
    assert (HQ.durations, HQ.resolutions) == (tuple(range(4, 16)), ("480p", "720p", "1080p"))
    assert HQ.aspect_ratios == ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "adaptive")
    assert (WAN.durations, WAN.resolutions) == (tuple(range(2, 16)), ("720p", "1080p"))
    assert HQ.price is not None
    assert (HQ.price.per_second, HQ.price.usd_per_credit) == ({"480p": 16.0, "720p": 34.0, "1080p": 85.0}, 0.005)
    assert WAN.price is None


def test_lost_creates_fail_and_callbacks_come_to_a_per_job_url() -> None:
    assert Minuit.unknown_outcome == "fail"
    assert Minuit.signs_webhooks is False


@pytest.mark.parametrize(
    ("spec", "given", "field"),
    [
        (HQ, {"aspect_ratio": "9:21"}, "aspect_ratio"),
        (HQ, {"duration": 2}, "duration"),
        (HQ, {"seed": 1}, "seed"),
        (HQ, {"negative_prompt": "blur"}, "negative_prompt"),
        (HQ, {"last_frame": IMAGE}, "last_frame"),
        (HQ, {"first_frame": IMAGE, "reference_images": [IMAGE]}, "reference_images"),
        (HQ, {"reference_images": [IMAGE] * 10}, "reference_images"),
        (HQ, {"reference_images": [IMAGE], "reference_videos": [IMAGE] * 4}, "reference_videos"),
        (WAN, {"first_frame": IMAGE, "resolution": "480p"}, "resolution"),
        (WAN, {"first_frame": IMAGE, "duration": 1}, "duration"),
        (WAN, {"first_frame": IMAGE, "aspect_ratio": "16:9"}, "aspect_ratio"),
        (WAN, {"first_frame": IMAGE, "reference_images": [IMAGE]}, "reference_images"),
        (WAN, {"first_frame": IMAGE, "reference_audios": [IMAGE, IMAGE]}, "reference_audios"),
        (WAN, {"first_frame": IMAGE, "seed": 2**31}, "seed"),
    ],
)
def test_capabilities_refuse_what_the_model_cannot_serve(spec: ModelSpec, given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_input(spec, {"prompt": "x", **given})
    assert refused.value.details["field"] == f"input.{field}"


@pytest.mark.parametrize(
    ("spec", "given"),
    [
        (WAN, {"first_frame": IMAGE, "duration": 2, "seed": 2**31 - 1, "aspect_ratio": "adaptive"}),
        (HQ, {"duration": 15, "resolution": "480p", "aspect_ratio": "21:9", "generate_audio": True}),
    ],
)
def test_capabilities_accept_each_models_own_range(spec: ModelSpec, given: dict[str, Any]) -> None:
    check_input(spec, {"prompt": "x", **given})


@pytest.mark.parametrize(
    ("spec", "given", "field"),
    [
        (WAN, {}, "first_frame"),
        (HQ, {"reference_videos": [IMAGE]}, "reference_videos"),
        (HQ, {"reference_audios": [IMAGE]}, "reference_audios"),
        (HQ, {"provider_options": {"moderation": "enabled"}}, "provider_options.moderation"),
        (HQ, {"provider_options": {"template": "t2v_high_quality"}}, "provider_options.template"),
        (WAN, {"first_frame": IMAGE, "provider_options": {"prompt_extend": "no"}}, "provider_options.prompt_extend"),
    ],
)
def test_adapter_refuses_before_dispatch_what_modelspec_cannot_express(
    spec: ModelSpec, given: dict[str, Any], field: str
) -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    with pytest.raises(InvalidRequest) as refused:
        check_for(spec, adapter, {"prompt": "x", **given})
    assert refused.value.details["field"] == f"input.{field}"
    assert spec.id in refused.value.message


def test_unconfigured_moderation_is_refused_before_dispatch_naming_the_setting() -> None:
    adapter = Minuit(settings(), httpx.AsyncClient())
    with pytest.raises(InvalidRequest, match="REELAY_MINUIT_MODERATION") as refused:
        check_for(HQ, adapter, {"prompt": "x"})
    assert refused.value.details == {"field": "model", "model": HQ.id}


# -- estimate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "credits", "usd"),
    [
        ({}, 170, 0.85),
        ({"resolution": "720p", "duration": 15}, 510, 2.55),
        ({"resolution": "480p", "duration": 4}, 64, 0.32),
        ({"resolution": "1080p", "duration": 10}, 850, 4.25),
    ],
)
def test_estimate_is_rate_times_duration(given: dict[str, Any], credits: int, usd: float) -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    assert adapter.estimate(HQ, {"prompt": "x", **given}) == {"credits_estimate": credits, "usd_estimate": usd}


def test_wan_has_no_published_price() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    assert adapter.estimate(WAN, {"prompt": "x", "first_frame": IMAGE}) == {}


# -- create ---------------------------------------------------------------------------------------------


async def test_requests_use_the_token_scheme() -> None:
    async with rig() as r:
        submission = await r.adapter.submit(job(HQ), HQ, None)
        await r.adapter.fetch(submission.provider_task_id)
    assert [request.headers["authorization"] for request in r.sent] == [f"Token {API_KEY}"] * 2
    assert all("x-api-key" not in request.headers for request in r.sent)


@pytest.mark.parametrize(
    ("spec", "given", "path", "body"),
    [
        (
            HQ,
            {},
            "/ent/v2/text2video",
            {
                "template": "t2v_high_quality",
                "prompt": "Slow push-in",
                "duration": 5,
                "resolution": "720p",
                "audio": False,
            },
        ),
        (
            HQ,
            {"duration": 15, "resolution": "1080p", "aspect_ratio": "9:16", "generate_audio": True},
            "/ent/v2/text2video",
            {
                "template": "t2v_high_quality",
                "prompt": "Slow push-in",
                "duration": 15,
                "resolution": "1080p",
                "aspect_ratio": "9:16",
                "audio": True,
            },
        ),
        (
            HQ,
            {"first_frame": IMAGE, "reference_videos": ["https://x/v.mp4"], "reference_audios": ["https://x/a.mp3"]},
            "/ent/v2/img2video",
            {
                "template": "i2v_high_quality",
                "images": [IMAGE],
                "prompt": "Slow push-in",
                "duration": 5,
                "resolution": "720p",
                "audio": False,
                "video_urls": ["https://x/v.mp4"],
                "audio_urls": ["https://x/a.mp3"],
            },
        ),
        (
            HQ,
            {"reference_images": ["https://x/1.png", "https://x/2.png"], "resolution": "480p"},
            "/ent/v2/reference2video",
            {
                "template": "r2v_high_quality",
                "images": ["https://x/1.png", "https://x/2.png"],
                "prompt": "Slow push-in",
                "duration": 5,
                "resolution": "480p",
                "audio": False,
            },
        ),
        (
            WAN,
            {"first_frame": IMAGE, "aspect_ratio": "adaptive"},
            "/ent/v2/img2video",
            {
                "model": "wan2.7-i2v-spicy",
                "image": IMAGE,
                "prompt": "Slow push-in",
                "duration": 5,
                "resolution": "720p",
                "audio": False,
            },
        ),
        (
            WAN,
            {
                "first_frame": IMAGE,
                "duration": 2,
                "resolution": "1080p",
                "generate_audio": True,
                "negative_prompt": "low quality",
                "seed": 7,
                "reference_audios": ["https://x/a.wav"],
                "provider_options": {"prompt_extend": False},
            },
            "/ent/v2/img2video",
            {
                "model": "wan2.7-i2v-spicy",
                "image": IMAGE,
                "prompt": "Slow push-in",
                "duration": 2,
                "resolution": "1080p",
                "audio": True,
                "negative_prompt": "low quality",
                "seed": 7,
                "audio_url": "https://x/a.wav",
                "prompt_extend": False,
            },
        ),
    ],
    ids=["t2v-defaults", "t2v-all", "i2v-refs", "r2v", "wan-defaults", "wan-all"],
)
async def test_create_path_and_body_follow_the_inputs(
    spec: ModelSpec, given: dict[str, Any], path: str, body: dict[str, Any]
) -> None:
    async with rig() as r:
        await r.adapter.submit(job(spec, **given), spec, None)
        accepted = (await r.creates())["accepted"]
    assert [(entry["path"], entry["body"]) for entry in accepted] == [(path, {**body, "moderation": "disabled"})]
    assert r.sent[0].method == "POST"
    assert r.sent[0].url == httpx.URL(BASE_URL + path)
    assert r.sent[0].headers["content-type"] == "application/json"


async def test_duration_is_an_integer_and_audio_is_explicit_on_the_wire() -> None:
    async with rig() as r:
        await r.adapter.submit(job(WAN, first_frame=IMAGE, duration=8), WAN, CALLBACK)
    raw = r.sent[0].content
    assert b'"duration":8,' in raw
    assert b'"audio":false' in raw
    assert json.loads(raw)["callback_url"] == CALLBACK


async def test_submit_returns_the_task_id_and_its_charge_without_the_accounts_balance() -> None:
    async with rig(quota_credits=1000) as r:
        submission = await r.adapter.submit(job(HQ, resolution="1080p", duration=4), HQ, None)
        accepted = (await r.creates())["accepted"]
    assert submission.provider_task_id == accepted[0]["task_id"]
    assert submission.provider_task_id.startswith("mnt_task_")
    # The quota's remaining / total_credits / used_credits describe the operator's account, not this job.
    assert submission.cost == {"credits_charged": 340, "usd_charged": 1.7}


async def test_submit_without_moderation_fails_permanently_and_sends_nothing() -> None:
    async with rig(provider=settings()) as r:
        with pytest.raises(PermanentError, match="REELAY_MINUIT_MODERATION"):
            await r.adapter.submit(job(HQ), HQ, None)
    assert r.sent == []


async def test_a_configured_moderation_value_is_sent_as_configured() -> None:
    adapter = Minuit(settings(moderation="enabled"), httpx.AsyncClient())
    _, body = adapter.payload(job(HQ, provider_options={}), HQ, None)
    assert body["moderation"] == "enabled"


# -- errors ---------------------------------------------------------------------------------------------


async def test_wrong_key_is_a_permanent_401_invalid_api_key() -> None:
    provider = ProviderSettings(base_url=BASE_URL, api_key="mn_live_wrong", options={"moderation": "disabled"})
    async with rig(provider=provider) as r:
        with pytest.raises(PermanentError) as refused:
            await r.adapter.submit(job(HQ), HQ, None)
    assert (refused.value.status, refused.value.provider_code) == (401, "invalid_api_key")


async def test_exhausted_quota_is_a_permanent_402_with_the_providers_message() -> None:
    async with rig(quota_credits=100) as r:
        with pytest.raises(PermanentError) as refused:
            await r.adapter.submit(job(HQ), HQ, None)
    assert (refused.value.status, refused.value.provider_code, refused.value.message) == (
        402,
        "quota_exhausted",
        "Quota exhausted",
    )


async def test_other_keys_task_is_a_permanent_404_task_not_found() -> None:
    async with rig(extra_api_keys=["mn_live_other"]) as r:
        task_id = (await r.adapter.submit(job(HQ), HQ, None)).provider_task_id
        other = Minuit(
            ProviderSettings(base_url=BASE_URL, api_key="mn_live_other", options={"moderation": "disabled"}),
            r.adapter.client,
        )
        with pytest.raises(PermanentError) as refused:
            await other.fetch(task_id)
    assert (refused.value.status, refused.value.provider_code) == (404, "task_not_found")


async def test_upstream_error_on_create_is_retryable_because_nothing_was_created() -> None:
    async with rig(knobs=SandboxKnobs(burst_5xx=1, processing_after_s=30, complete_after_s=60)) as r:
        with pytest.raises(TransientError) as refused:
            await r.adapter.submit(job(HQ), HQ, None)
    assert refused.value.maybe_sent is False


async def test_a_lost_create_answer_is_an_unknown_outcome() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(OutcomeUnknown):
            await Minuit(CONFIGURED, client).submit(job(HQ), HQ, None)


async def test_create_answer_without_task_id_is_not_understood() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"state": "queueing"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ValueError, match="task_id"):
            await Minuit(CONFIGURED, client).submit(job(HQ), HQ, None)


async def test_server_error_and_rate_limit_on_status_are_transient() -> None:
    async with rig(knobs=SandboxKnobs(burst_429=1, burst_5xx=1)) as r:
        with pytest.raises(TransientError) as limited:
            await r.adapter.fetch("mnt_task_x")
        with pytest.raises(TransientError):
            await r.adapter.fetch("mnt_task_x")
    assert limited.value.retry_after == 1.0
    assert r.sent[0].url.path == "/ent/v2/tasks/mnt_task_x/creations"


# -- status ---------------------------------------------------------------------------------------------


async def test_fetch_reports_queued_then_processing_then_succeeded() -> None:
    async with rig() as r:
        task_id = (await r.adapter.submit(job(HQ), HQ, None)).provider_task_id
        queued = await r.adapter.fetch(task_id)
        await r.control.put("/_sandbox/knobs", json={})
        await r.control.post(f"/_sandbox/tasks/{task_id}/complete")
        succeeded = await r.adapter.fetch(task_id)
    assert (queued.status, queued.provider_task_id, queued.output) == ("queued", task_id, None)
    assert succeeded.status == "succeeded"
    assert succeeded.output is not None
    [video] = succeeded.output["videos"]
    assert (result_path(video["url"]), video["thumbnail_url"]) == (f"{task_id}/generated-result.mp4", None)
    assert succeeded.output["last_frame_url"] is None
    assert succeeded.error is None


async def test_fetch_reports_processing() -> None:
    async with rig(knobs=SandboxKnobs(processing_after_s=0, complete_after_s=60)) as r:
        task_id = (await r.adapter.submit(job(HQ), HQ, None)).provider_task_id
        report = await r.adapter.fetch(task_id)
    assert report.status == "processing"


async def test_fetch_reports_failure_with_err_msg_and_err_code() -> None:
    async with rig() as r:
        task_id = (await r.adapter.submit(job(HQ), HQ, None)).provider_task_id
        await r.control.post(f"/_sandbox/tasks/{task_id}/fail")
        report = await r.adapter.fetch(task_id)
    assert report.status == "failed"
    assert report.error == {
        "code": "generation_failed",
        "message": "The generated video did not pass the content review.",
        "provider_code": "CreationPolicyViolation",
    }


@pytest.mark.parametrize(
    ("data", "status"),
    [
        ({"task_id": "t", "state": "created"}, "queued"),
        ({"task_id": "t", "status": "processing"}, "processing"),
        ({"task_id": "t", "state": "SUCCESS", "creations": [{"url": "https://x/v.mp4"}]}, "succeeded"),
        ({"task_id": "t", "state": "scheduling"}, "processing"),
        ({"task_id": "t"}, "processing"),
        ({"task_id": "t", "state": "failed", "err_code": "UserCancelled"}, "cancelled"),
    ],
)
def test_state_words_are_normalized(data: dict[str, Any], status: str) -> None:
    assert Minuit(CONFIGURED, httpx.AsyncClient()).report(data).status == status


def test_cover_url_becomes_the_thumbnail() -> None:
    data = {"id": "t", "state": "success", "creations": [{"url": "https://x/v.mp4", "cover_url": "https://x/c.jpg"}]}
    report = Minuit(CONFIGURED, httpx.AsyncClient()).report(data)
    assert report.output == {
        "videos": [{"url": "https://x/v.mp4", "thumbnail_url": "https://x/c.jpg"}],
        "last_frame_url": None,
    }
    assert report.provider_task_id == "t"


def test_success_without_a_video_is_a_failure() -> None:
    report = Minuit(CONFIGURED, httpx.AsyncClient()).report({"task_id": "t", "state": "success", "creations": []})
    assert report.status == "failed"
    assert report.error is not None
    assert report.error["code"] == "generation_failed"


def test_failure_without_details_still_has_an_error() -> None:
    report = Minuit(CONFIGURED, httpx.AsyncClient()).report({"task_id": "t", "state": "failed"})
    assert report.error == {
        "code": "generation_failed",
        "message": "the provider reported failure",
        "provider_code": "failed",
    }


async def test_cancel_is_not_offered() -> None:
    assert await Minuit(CONFIGURED, httpx.AsyncClient()).cancel("mnt_task_x") is False


# -- webhooks -------------------------------------------------------------------------------------------


def _callback(state: str = "success", key: str = "state", **extra: Any) -> bytes:
    data: dict[str, Any] = {"id": "mnt_task_1", "task_id": "mnt_task_1", key: state, "creations": [], **extra}
    return msgspec.json.encode(data)


def test_callback_without_a_job_token_is_refused() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    with pytest.raises(SignatureError) as refused:
        adapter.verify_webhook({}, _callback(), now=0.0, job=None)
    assert refused.value.reason == "invalid_token"


def test_callback_on_the_per_job_url_of_a_submitted_job_is_accepted() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    adapter.verify_webhook({}, _callback(), now=0.0, job=job(HQ, task_id="mnt_task_1"))


def test_every_callback_needs_confirmation() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    notice = adapter.parse_webhook(_callback(creations=[{"url": "https://x/v.mp4"}]))
    assert notice.report.status == "succeeded"
    assert adapter.needs_confirmation(notice, job(HQ, task_id="mnt_task_1")) is True


def test_receipt_key_is_task_and_state_and_stable_for_a_redelivery() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    first = adapter.parse_webhook(_callback("processing"))
    again = adapter.parse_webhook(_callback("processing"))
    later = adapter.parse_webhook(_callback("success"))
    assert first.provider_task_id == "mnt_task_1"
    assert first.receipt_key.startswith("mnt_task_1:processing:")
    assert first.receipt_key == again.receipt_key
    assert later.receipt_key.startswith("mnt_task_1:success:")


def test_a_different_body_with_the_same_state_is_not_a_duplicate() -> None:
    adapter = Minuit(CONFIGURED, httpx.AsyncClient())
    forged = adapter.parse_webhook(_callback(creations=[{"url": "https://evil.example/v.mp4"}]))
    genuine = adapter.parse_webhook(_callback(creations=[{"url": "https://x/v.mp4"}]))
    assert forged.receipt_key != genuine.receipt_key


def test_callback_may_say_status_instead_of_state() -> None:
    notice = Minuit(CONFIGURED, httpx.AsyncClient()).parse_webhook(_callback("processing", key="status"))
    assert notice.report.status == "processing"
    assert notice.receipt_key.startswith("mnt_task_1:processing:")


@pytest.mark.parametrize("body", [b"[]", b'"x"', b'{"state": "success"}', b"not json"])
def test_unreadable_callback_is_rejected(body: bytes) -> None:
    with pytest.raises((ValueError, msgspec.DecodeError)):
        Minuit(CONFIGURED, httpx.AsyncClient()).parse_webhook(body)
