"""Magnific end to end over real HTTP: POST /v1/jobs → dispatcher → emulator → Standard Webhooks callbacks → SSE,
and the callbacks Reelay must refuse or ignore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing.standard import sign_headers
from sandbox import SANDBOXES, SandboxKnobs
from sandbox.media import result_path
from tests.harness import Stack, collect_events, stack

MODEL = "magnific/seedance-2-mini"
SECRET = SANDBOXES["magnific"].webhook_secret or ""
SLOW = {"processing_after_s": 60, "complete_after_s": 120}


@pytest.fixture
async def magnific(tmp_path: Path) -> AsyncIterator[Stack]:
    """Reelay plus the Magnific emulator, over real HTTP on loopback."""
    async with stack(tmp_path, providers=("magnific",)) as running:
        yield running


async def _pending_job(stack_: Stack) -> dict[str, Any]:
    """A job Magnific has accepted but will not move on its own for a minute."""
    await stack_.sandbox("magnific", "PUT", "/_sandbox/knobs", json=SLOW)
    return await stack_.accepted((await stack_.submit(model=MODEL))["id"])


def _completed(task_id: str) -> bytes:
    return msgspec.json.encode(
        {"task_id": task_id, "status": "COMPLETED", "generated": [f"https://cdn.example/{task_id}.mp4"]}
    )


async def _post(stack_: Stack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    return await stack_.client.post(f"{stack_.url}/webhooks/magnific", content=body, headers=sent)


def _signed(body: bytes, *, secret: str = SECRET, msg_id: str = "msg_1", at: int | None = None) -> dict[str, str]:
    return sign_headers(body, secret, msg_id=msg_id, timestamp=int(time.time()) if at is None else at)


async def test_job_succeeds_through_signed_callbacks_and_reaches_sse_subscriber(magnific: Stack) -> None:
    received: list[dict[str, Any]] = []
    connected = asyncio.Event()
    listener = asyncio.create_task(
        collect_events(magnific, f"{magnific.url}/v1/events", "job.succeeded", received, connected)
    )
    await connected.wait()  # a live subscriber, connected before the job exists
    job = await magnific.submit(model=MODEL, resolution="480p", aspect_ratio="9:16", seed=7)
    async with asyncio.timeout(10):
        await listener
    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
    final = received[-1]["job"]
    assert final["id"] == job["id"]
    task_id = final["provider_task_id"]
    [video] = final["output"]["videos"]
    assert (result_path(video["url"]), video["thumbnail_url"]) == (f"480p/{task_id}.mp4", None)
    assert final["output"]["last_frame_url"] is None
    assert final["cost"] == {
        "credits_estimate": None,
        "usd_estimate": None,
        "credits_charged": None,
        "usd_charged": None,
    }
    creates = await magnific.sandbox("magnific", "GET", "/_sandbox/creates")
    record = await magnific.store.get_job(job["id"])
    assert creates["accepted"] == [
        {
            "task_id": task_id,
            "resolution": "480p",
            "body": {
                "prompt": "a drone shot of waves",
                "duration": 5,
                "aspect_ratio": "social_story_9_16",
                "seed": 7,
                # A per-job URL: the callback finds its job even before the create's answer is stored.
                "webhook_url": f"{magnific.url}/webhooks/magnific/{job['id']}/{record.callback_token}",
            },
        }
    ]
    # Both status changes came as callbacks, and Reelay took each one.
    callbacks = (await magnific.sandbox("magnific", "GET", "/_sandbox/callbacks"))["callbacks"]
    assert [(c["status"], c["status_code"]) for c in callbacks] == [("IN_PROGRESS", 200), ("COMPLETED", 200)]


async def test_model_refuses_what_magnific_cannot_serve_with_400(magnific: Stack) -> None:
    cases: dict[str, dict[str, Any]] = {
        "input.duration": {"duration": 7},
        "input.aspect_ratio": {"aspect_ratio": "adaptive"},
        "input.resolution": {"resolution": "1080p"},
        "input.generate_audio": {"generate_audio": True},
        "input.reference_images": {"reference_images": ["https://x/a.png"]},
        "input.prompt": {"prompt": "x" * 2001},
        "input.last_frame": {"last_frame": "https://x/b.png"},
    }
    for field, given in cases.items():
        body = {"model": MODEL, "input": {"prompt": "waves", **given}}
        response = await magnific.client.post(f"{magnific.url}/v1/jobs", json=body, headers=magnific.headers)
        assert response.status_code == 400, field
        assert response.json()["error"]["details"]["field"] == field
    assert (await magnific.sandbox("magnific", "GET", "/_sandbox/creates"))["attempts"] == 0


async def test_forged_webhook_changes_nothing(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    body = _completed(job["provider_task_id"])
    response = await _post(magnific, body, _signed(body, secret="whsec_bm90LXRoZS1zZWNyZXQ="))
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "signature_mismatch"
    assert (await magnific.job(job["id"]))["status"] == "queued"
    assert await magnific.event_types(job["id"]) == ["job.created", "job.submitted"]


async def test_per_job_callback_with_a_task_another_job_owns_changes_nothing(magnific: Stack) -> None:
    owner = await _pending_job(magnific)
    await magnific.sandbox("magnific", "PUT", "/_sandbox/knobs", json={**SLOW, "latency_s": 3.0})
    named = await magnific.submit(model=MODEL)  # its create is still in flight: no task id yet
    record = await magnific.store.get_job(named["id"])
    body = _completed(owner["provider_task_id"])
    url = f"{magnific.url}/webhooks/magnific/{named['id']}/{record.callback_token}"
    headers = {"Content-Type": "application/json", **_signed(body)}
    response = await magnific.client.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "ignored"
    assert (await magnific.job(named["id"]))["provider_task_id"] is None
    assert await magnific.event_types(named["id"]) == ["job.created"]
    assert await magnific.event_types(owner["id"]) == ["job.created", "job.submitted"]


async def test_tampered_webhook_changes_nothing(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    body = _completed(job["provider_task_id"])
    headers = _signed(body)
    response = await _post(magnific, body.replace(b".mp4", b".mov"), headers)
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "signature_mismatch"
    assert await magnific.event_types(job["id"]) == ["job.created", "job.submitted"]
    # The refused attempt left no receipt: the genuine body with the same headers still applies.
    assert (await _post(magnific, body, headers)).json()["result"] == "applied"


async def test_replayed_webhook_is_acknowledged_and_changes_nothing(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    body = _completed(job["provider_task_id"])
    headers = _signed(body)
    first = await _post(magnific, body, headers)
    again = await _post(magnific, body, headers)
    assert first.status_code == 200
    assert first.json()["result"] == "applied"
    assert again.status_code == 200
    assert again.json()["result"] == "duplicate"
    assert await magnific.event_types(job["id"]) == ["job.created", "job.submitted", "job.succeeded"]


async def test_stale_webhook_changes_nothing(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    body = _completed(job["provider_task_id"])
    response = await _post(magnific, body, _signed(body, at=int(time.time()) - 3600))
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "timestamp_too_old"
    assert await magnific.event_types(job["id"]) == ["job.created", "job.submitted"]


async def test_wrapped_webhook_body_is_applied_too(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    body = msgspec.json.encode({"data": msgspec.json.decode(_completed(job["provider_task_id"]))})
    assert (await _post(magnific, body, _signed(body))).json()["result"] == "applied"
    assert (await magnific.job(job["id"]))["status"] == "succeeded"


async def test_in_progress_callback_arriving_after_completion_changes_nothing(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.4, out_of_order_rate=1.0)
    async with stack(tmp_path, providers=("magnific",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        await running.wait_for(job["id"], {"succeeded"})

        async def both_delivered() -> list[dict[str, Any]]:
            while len(log := (await running.sandbox("magnific", "GET", "/_sandbox/callbacks"))["callbacks"]) < 2:
                await asyncio.sleep(0.02)
            return list(log)

        async with asyncio.timeout(5):
            log = await both_delivered()
        assert [(c["status"], c["kind"], c["status_code"]) for c in log] == [
            ("COMPLETED", "delivery", 200),
            ("IN_PROGRESS", "out_of_order", 200),
        ]
        assert await running.event_types(job["id"]) == ["job.created", "job.submitted", "job.succeeded"]


async def test_dropped_callbacks_are_recovered_by_polling(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3, drop_callback_rate=1.0)
    async with stack(tmp_path, providers=("magnific",), knobs=knobs, callback_grace_seconds=1.0) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded"
        assert done["output"]["videos"][0]["url"].endswith(f"/720p/{done['provider_task_id']}.mp4")
        callbacks = await running.sandbox("magnific", "GET", "/_sandbox/callbacks")
        assert {c["kind"] for c in callbacks["callbacks"]} == {"dropped"}


async def test_provider_failure_is_reported_without_a_reason(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, failure_rate=1.0)
    async with stack(tmp_path, providers=("magnific",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "generation_failed",
        "message": "the provider reported failure and gave no reason",
        "provider_code": "FAILED",
    }


async def test_completion_without_a_video_is_confirmed_and_fails(magnific: Stack) -> None:
    job = await _pending_job(magnific)
    await magnific.sandbox("magnific", "POST", f"/_sandbox/tasks/{job['provider_task_id']}/complete?empty=true")
    done = await magnific.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["message"] == "the provider reported completion without a video"
    assert done["error"]["provider_code"] == "COMPLETED"


async def test_rate_limit_and_server_error_bursts_are_retried_into_one_task(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, burst_429=1, burst_5xx=1)
    async with stack(tmp_path, providers=("magnific",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        creates = await running.sandbox("magnific", "GET", "/_sandbox/creates")
    assert done["status"] == "succeeded"
    assert creates["attempts"] == 3
    assert [c["task_id"] for c in creates["accepted"]] == [done["provider_task_id"]]


async def test_lost_create_answer_fails_the_job_without_resending(tmp_path: Path) -> None:
    knobs = SandboxKnobs(latency_s=1.0, processing_after_s=60, complete_after_s=120)
    async with stack(tmp_path, providers=("magnific",), knobs=knobs, upstream_timeout_seconds=0.3) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"failed"})
        creates = await running.sandbox("magnific", "GET", "/_sandbox/creates")
    assert done["error"]["code"] == "submit_outcome_unknown"
    assert creates["attempts"] == 1
