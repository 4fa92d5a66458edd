"""Minuit end to end over real HTTP: POST /v1/jobs → dispatcher → emulator → unsigned callback → confirming
poll → SSE; forged and replayed callbacks change nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from sandbox import SandboxKnobs
from sandbox.media import result_path
from service.providers.minuit import Minuit
from tests.harness import LoseFirstCreateAnswer, Stack, collect_events, stack

MODEL = "minuit/high_quality"
IMAGE = "https://example.com/first-frame.jpg"
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.3)


@pytest.fixture
async def minuit(tmp_path: Path) -> AsyncIterator[Stack]:
    """Reelay plus the Minuit emulator; tasks reach processing after 0.3 s and succeed after 1 s."""
    async with stack(
        tmp_path, providers=("minuit",), knobs=SandboxKnobs(processing_after_s=0.3, complete_after_s=1.0)
    ) as running:
        yield running


async def _task(stack_: Stack, job_id: str) -> dict[str, Any]:
    """The emulator's record of the job's task, including the callback URL Reelay gave it."""
    job = await stack_.accepted(job_id)
    tasks = (await stack_.sandbox("minuit", "GET", "/_sandbox/tasks"))["tasks"]
    task: dict[str, Any] = next(t for t in tasks if t["task_id"] == job["provider_task_id"])
    return task


async def _quiet_task(stack_: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    """A submitted job whose task is processing upstream, and whose own callbacks never arrive."""
    knobs = {"processing_after_s": 0, "complete_after_s": 120, "drop_callback_rate": 1.0}
    await stack_.sandbox("minuit", "PUT", "/_sandbox/knobs", json=knobs)
    job = await stack_.submit(model=MODEL)
    return job, await _task(stack_, job["id"])


def _success_body(task_id: str, url: str = "https://evil.example/fake.mp4") -> bytes:
    body = {"id": task_id, "task_id": task_id, "state": "success", "creations": [{"url": url}]}
    return msgspec.json.encode(body)


async def _post(stack_: Stack, url: str, body: bytes) -> httpx.Response:
    return await stack_.client.post(url, content=body, headers={"Content-Type": "application/json"})


# -- the happy path -------------------------------------------------------------------------------------


async def test_job_succeeds_through_confirmed_callbacks_and_reaches_sse_subscriber(minuit: Stack) -> None:
    received: list[dict[str, Any]] = []
    connected = asyncio.Event()
    listener = asyncio.create_task(
        collect_events(minuit, f"{minuit.url}/v1/events", "job.succeeded", received, connected)
    )
    await connected.wait()
    job = await minuit.submit(model=MODEL, resolution="720p", aspect_ratio="16:9")
    async with asyncio.timeout(10):  # well inside the 120 s callback grace: the callbacks drove it
        await listener
    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
    assert {e["job"]["id"] for e in received} == {job["id"]}
    final = received[-1]["job"]
    task_id = final["provider_task_id"]
    assert task_id.startswith("mnt_task_")
    [video] = final["output"]["videos"]
    assert (result_path(video["url"]), video["thumbnail_url"]) == (f"{task_id}/generated-result.mp4", None)
    assert final["output"]["last_frame_url"] is None
    assert final["cost"]["credits_estimate"] == final["cost"]["credits_charged"] == 170
    assert final["cost"]["usd_estimate"] == final["cost"]["usd_charged"] == 0.85
    creates = await minuit.sandbox("minuit", "GET", "/_sandbox/creates")
    (accepted,) = creates["accepted"]
    assert accepted["path"] == "/ent/v2/text2video"
    callback_url = accepted["body"].pop("callback_url")
    assert re.fullmatch(rf"{re.escape(minuit.url)}/webhooks/minuit/{job['id']}/[A-Za-z0-9_-]{{20,}}", callback_url)
    assert accepted["body"] == {
        "template": "t2v_high_quality",
        "prompt": "a drone shot of waves",
        "duration": 5,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "audio": False,
        "moderation": "disabled",
    }
    callbacks = (await minuit.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]
    assert [(c["state"], c["status_code"]) for c in callbacks if c["status_code"] == 200] == [
        ("processing", 200),
        ("success", 200),
    ]


async def test_wan_job_succeeds_with_a_charge_but_no_estimate(minuit: Stack) -> None:
    job = await minuit.submit(model="minuit/wan2.7-i2v-spicy", first_frame=IMAGE, seed=7, resolution="1080p")
    done = await minuit.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded"
    assert done["cost"]["credits_estimate"] is None
    assert done["cost"]["credits_charged"] == 425
    body = (await minuit.sandbox("minuit", "GET", "/_sandbox/creates"))["accepted"][0]["body"]
    assert (body["model"], body["image"], body["seed"], body["audio"]) == ("wan2.7-i2v-spicy", IMAGE, 7, False)
    assert "template" not in body


async def test_models_endpoint_lists_both_minuit_models(minuit: Stack) -> None:
    response = await minuit.client.get(f"{minuit.url}/v1/models", headers=minuit.headers)
    models = {m["id"]: m for m in response.json()["data"] if m["id"].startswith("minuit/")}
    assert set(models) == {"minuit/high_quality", "minuit/wan2.7-i2v-spicy"}
    wan, high_quality = models["minuit/wan2.7-i2v-spicy"], models["minuit/high_quality"]
    assert wan["available"] is high_quality["available"] is True
    assert wan["capabilities"]["resolutions"] == ["720p", "1080p"]
    assert wan["price"] is None
    assert "9:21" not in high_quality["capabilities"]["aspect_ratios"]
    assert high_quality["price"]["per_second"] == {"480p": 16.0, "720p": 34.0, "1080p": 85.0}
    assert high_quality["price"]["usd_per_credit"] == 0.005


async def test_dropped_callbacks_are_recovered_by_polling(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.3, drop_callback_rate=1.0)
    async with stack(tmp_path, providers=("minuit",), knobs=knobs, callback_grace_seconds=1.0) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        callbacks = (await running.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]
    assert done["status"] == "succeeded"
    assert {c["kind"] for c in callbacks} == {"dropped"}


async def test_provider_failure_is_reported_with_its_message_and_code(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.3, failure_rate=1.0)
    async with stack(tmp_path, providers=("minuit",), knobs=knobs) as running:
        job = await running.submit(model=MODEL, first_frame=IMAGE)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "generation_failed",
        "message": "The generated video did not pass the content review.",
        "provider_code": "CreationPolicyViolation",
    }
    assert done["cost"]["credits_charged"] == 170  # no refund rule is documented


async def test_duplicated_and_out_of_order_callbacks_change_nothing_twice(tmp_path: Path) -> None:
    knobs = SandboxKnobs(
        processing_after_s=0.2, complete_after_s=0.6, duplicate_callback_rate=1.0, out_of_order_rate=1.0
    )
    async with stack(tmp_path, providers=("minuit",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        await running.wait_for(job["id"], {"succeeded"})
        async with asyncio.timeout(5):  # the late processing callback and its duplicate, after the success ones
            while len((await running.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]) < 4:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        callbacks = (await running.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]
        assert [(c["state"], c["kind"], c["status_code"]) for c in callbacks] == [
            ("success", "delivery", 200),
            ("success", "duplicate", 200),
            ("processing", "late", 200),
            ("processing", "duplicate", 200),
        ]
        assert (await running.job(job["id"]))["status"] == "succeeded"
        assert await running.event_types(job["id"]) == ["job.created", "job.submitted", "job.succeeded"]


# -- what Reelay refuses before anything goes upstream ----------------------------------------------------


async def test_unconfigured_moderation_refuses_the_job_and_sends_nothing(tmp_path: Path) -> None:
    overrides: dict[str, dict[str, Any]] = {"minuit": {"options": {}}}
    async with stack(tmp_path, providers=("minuit",), provider_overrides=overrides) as running:
        body = {"model": MODEL, "input": {"prompt": "waves"}}
        response = await running.client.post(f"{running.url}/v1/jobs", json=body, headers=running.headers)
        listed = await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)
        creates = await running.sandbox("minuit", "GET", "/_sandbox/creates")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "REELAY_MINUIT_MODERATION" in response.json()["error"]["message"]
    assert listed.json()["data"] == []
    assert creates["attempts"] == 0


@pytest.mark.parametrize(
    ("model", "given", "field"),
    [
        ("minuit/wan2.7-i2v-spicy", {"first_frame": IMAGE, "resolution": "480p"}, "input.resolution"),
        ("minuit/wan2.7-i2v-spicy", {}, "input.first_frame"),
        (MODEL, {"aspect_ratio": "9:21"}, "input.aspect_ratio"),
        (MODEL, {"duration": 3}, "input.duration"),
        (MODEL, {"reference_videos": ["https://x/v.mp4"]}, "input.reference_videos"),
        (MODEL, {"provider_options": {"moderation": "disabled"}}, "input.provider_options.moderation"),
    ],
)
async def test_inputs_the_model_cannot_serve_are_refused_over_http(
    minuit: Stack, model: str, given: dict[str, Any], field: str
) -> None:
    body = {"model": model, "input": {"prompt": "waves", **given}}
    response = await minuit.client.post(f"{minuit.url}/v1/jobs", json=body, headers=minuit.headers)
    creates = await minuit.sandbox("minuit", "GET", "/_sandbox/creates")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == field
    assert creates["attempts"] == 0


# -- the dispatcher's view of Minuit's errors ------------------------------------------------------------


async def test_upstream_errors_on_create_are_retried_and_the_task_created_once(tmp_path: Path) -> None:
    async with stack(
        tmp_path, providers=("minuit",), knobs=SandboxKnobs(burst_5xx=2, processing_after_s=0.05, complete_after_s=0.3)
    ) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        creates = await running.sandbox("minuit", "GET", "/_sandbox/creates")
    assert done["status"] == "succeeded"
    assert (creates["attempts"], len(creates["accepted"])) == (3, 1)


async def test_upstream_errors_past_the_cap_fail_the_job_as_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Minuit's 502 may be a moderation rejection, so it is retried only up to a cap (5; 2 here, for time)."""
    monkeypatch.setattr(Minuit, "server_error_attempts", 2)
    async with stack(
        tmp_path, providers=("minuit",), knobs=SandboxKnobs(burst_5xx=10, processing_after_s=0.05, complete_after_s=0.3)
    ) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        creates = await running.sandbox("minuit", "GET", "/_sandbox/creates")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_rejected"
    assert done["error"]["provider_code"] == "upstream_error"
    assert "on 2 attempts" in done["error"]["message"]
    assert (creates["attempts"], len(creates["accepted"])) == (2, 0)


async def test_lost_create_answer_fails_the_job_and_is_never_resent(tmp_path: Path) -> None:
    transport = LoseFirstCreateAnswer("/ent/v2/")
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(tmp_path, providers=("minuit",), knobs=QUICK, http_client=client) as running,
    ):
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        creates = await running.sandbox("minuit", "GET", "/_sandbox/creates")
    assert transport.lost == 1
    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_outcome_unknown"
    assert (creates["attempts"], len(creates["accepted"])) == (1, 1)


# -- forged and replayed callbacks -------------------------------------------------------------------------


async def test_callback_without_a_token_is_refused(minuit: Stack) -> None:
    job, task = await _quiet_task(minuit)
    response = await _post(minuit, f"{minuit.url}/webhooks/minuit", _success_body(task["task_id"]))
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "invalid_token"
    assert (await minuit.job(job["id"]))["status"] == "queued"
    assert await minuit.event_types(job["id"]) == ["job.created", "job.submitted"]


async def test_callback_with_a_wrong_token_is_refused(minuit: Stack) -> None:
    job, task = await _quiet_task(minuit)
    url = task["callback_url"].rsplit("/", 1)[0] + "/not-the-token"
    response = await _post(minuit, url, _success_body(task["task_id"]))
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "invalid_token"
    assert await minuit.event_types(job["id"]) == ["job.created", "job.submitted"]


async def test_callback_with_another_jobs_token_is_refused(minuit: Stack) -> None:
    job, task = await _quiet_task(minuit)
    other, other_task = await _quiet_task(minuit)
    other_token = other_task["callback_url"].rsplit("/", 1)[1]
    url = f"{minuit.url}/webhooks/minuit/{job['id']}/{other_token}"
    response = await _post(minuit, url, _success_body(task["task_id"]))
    assert response.status_code == 401
    assert await minuit.event_types(job["id"]) == ["job.created", "job.submitted"]
    assert await minuit.event_types(other["id"]) == ["job.created", "job.submitted"]


async def test_callback_claiming_success_while_the_provider_says_processing_is_not_believed(minuit: Stack) -> None:
    job, task = await _quiet_task(minuit)
    response = await _post(minuit, task["callback_url"], _success_body(task["task_id"]))
    assert response.status_code == 200
    assert response.json() == {"received": True, "result": "confirming"}
    # The confirming poll asks Minuit, which says processing: that, not the body, is what the job shows.
    confirmed = await minuit.wait_for(job["id"], {"processing", "succeeded"}, timeout=5)
    assert confirmed["status"] == "processing"
    assert confirmed["output"] is None
    assert await minuit.event_types(job["id"]) == ["job.created", "job.submitted", "job.processing"]


async def test_replayed_genuine_callback_is_acknowledged_and_changes_nothing(minuit: Stack) -> None:
    job = await minuit.submit(model=MODEL)
    await minuit.wait_for(job["id"], {"succeeded"})
    events = await minuit.event_types(job["id"])
    callbacks = (await minuit.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]
    genuine = next(c for c in callbacks if c["state"] == "success" and c["status_code"] == 200)
    for _ in range(3):
        response = await _post(minuit, genuine["url"], genuine["body"].encode())
        assert response.status_code == 200
        assert response.json() == {"received": True, "result": "confirming"}  # only a status check follows
    assert await minuit.event_types(job["id"]) == events
    assert events == ["job.created", "job.submitted", "job.processing", "job.succeeded"]


class DelayCreateAnswer(httpx.AsyncHTTPTransport):
    """Holds the answer to each create for a second after the provider has made the task."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path.startswith("/ent/v2/"):
            await asyncio.sleep(1.0)
        return response


async def test_callback_that_overtakes_the_create_answer_leads_to_a_check_once_submitted(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0, complete_after_s=3.0)
    async with (
        httpx.AsyncClient(transport=DelayCreateAnswer()) as client,
        stack(tmp_path, providers=("minuit",), knobs=knobs, http_client=client) as running,
    ):
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        callbacks = (await running.sandbox("minuit", "GET", "/_sandbox/callbacks"))["callbacks"]
        events = await running.event_types(job["id"])
    # Accepted while the create's answer was still on its way, without disturbing the dispatcher: the job is
    # checked as soon as it is submitted, long before the callback grace period.
    processing = [c["status_code"] for c in callbacks if c["state"] == "processing"]
    assert processing[0] == 200
    assert done["status"] == "succeeded"
    assert events == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
