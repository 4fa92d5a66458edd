"""MindVideo end to end over real HTTP: POST /v1/jobs → dispatcher → emulator → poller → SSE, no webhooks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import SandboxKnobs
from tests.harness import LoseFirstCreateAnswer, Stack, collect_events, stack

MODEL = "mindvideo/doubao-seedance-2-0-fast"
# Slow enough that the first poll (about 1 s after submit) sees `processing`, quick enough for a test.
VISIBLE = SandboxKnobs(processing_after_s=0.2, complete_after_s=2.0)
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2)
PENDING = {"processing_after_s": 60, "complete_after_s": 120}


@pytest.fixture
async def mindvideo(tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack(tmp_path, providers=("mindvideo",), knobs=VISIBLE) as running:
        yield running


async def _creates(stack_: Stack) -> dict[str, Any]:
    creates: dict[str, Any] = await stack_.sandbox("mindvideo", "GET", "/_sandbox/creates")
    return creates


async def _submitted(stack_: Stack, **input: Any) -> dict[str, Any]:
    """A job the provider has accepted but will not finish on its own for a minute."""
    await stack_.sandbox("mindvideo", "PUT", "/_sandbox/knobs", json=PENDING)
    return await stack_.accepted((await stack_.submit(model=MODEL, **input))["id"])


async def test_job_succeeds_by_polling_and_reaches_the_sse_subscriber(mindvideo: Stack) -> None:
    received: list[dict[str, Any]] = []
    connected = asyncio.Event()
    listener = asyncio.create_task(
        collect_events(mindvideo, f"{mindvideo.url}/v1/events", "job.succeeded", received, connected)
    )
    await connected.wait()
    job = await mindvideo.submit(model=MODEL, aspect_ratio="9:16")
    assert (job["status"], job["provider"]) == ("queued", "mindvideo")
    async with asyncio.timeout(15):
        await listener
    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
    assert {e["job"]["id"] for e in received} == {job["id"]}
    final = received[-1]["job"]
    assert final["output"]["videos"][0]["url"].endswith(f"/{final['provider_task_id']}.mp4")
    assert final["error"] is None
    assert final["cost"] == {
        "credits_estimate": None,
        "usd_estimate": 0.1314,
        "credits_charged": None,
        "usd_charged": 0.1314,
    }
    accepted = (await _creates(mindvideo))["accepted"]
    assert accepted == [
        {
            "id": final["provider_task_id"],
            "idempotency_key": job["id"],
            "body": {
                "model": "doubao-seedance-2-0-fast",
                "input": {
                    "prompt": "a drone shot of waves",
                    "duration": 5,
                    "resolution": "720p",
                    "generate_audio": False,
                    "size": "9:16",
                },
            },
        }
    ]


async def test_provider_failure_is_reported_with_the_providers_code(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, failure_rate=1.0)
    async with stack(tmp_path, providers=("mindvideo",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"] == {
        "code": "generation_failed",
        "message": "Video generation failed upstream. Please adjust the input and try again.",
        "provider_code": "generation_failed",
    }
    assert done["cost"]["usd_charged"] == 0


async def test_lost_create_answer_is_resent_with_the_same_key_and_charged_once(tmp_path: Path) -> None:
    transport = LoseFirstCreateAnswer("/api/v1/tasks")
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(tmp_path, providers=("mindvideo",), knobs=QUICK, http_client=client) as running,
    ):
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        creates = await _creates(running)
    assert done["status"] == "succeeded"
    assert transport.keys == [job["id"], job["id"]]
    assert [entry["id"] for entry in creates["accepted"]] == [done["provider_task_id"]]
    assert creates["replayed"] == [{"id": done["provider_task_id"], "idempotency_key": job["id"]}]


async def test_server_error_on_create_is_retried_without_a_second_task(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, burst_5xx=1)
    async with stack(tmp_path, providers=("mindvideo",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        creates = await _creates(running)
    assert done["status"] == "succeeded"
    assert creates["attempts"] == 2
    assert [entry["idempotency_key"] for entry in creates["accepted"]] == [job["id"]]


async def test_seed_beyond_int32_is_refused_before_anything_is_sent(mindvideo: Stack) -> None:
    body = {"model": MODEL, "input": {"prompt": "p", "seed": 4294967295}}
    response = await mindvideo.client.post(f"{mindvideo.url}/v1/jobs", json=body, headers=mindvideo.headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["field"] == "input.seed"
    assert error["details"]["allowed"] == {"min": 0, "max": 2147483647}
    assert (await _creates(mindvideo))["attempts"] == 0


async def test_frame_with_reference_video_is_refused_with_400(mindvideo: Stack) -> None:
    input = {"prompt": "p", "first_frame": "https://x/a.png", "reference_videos": ["https://x/v.mp4"]}
    response = await mindvideo.client.post(
        f"{mindvideo.url}/v1/jobs", json={"model": MODEL, "input": input}, headers=mindvideo.headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "input.reference_videos"


async def test_audio_without_references_is_refused_with_400_and_nothing_is_sent(mindvideo: Stack) -> None:
    response = await mindvideo.client.post(
        f"{mindvideo.url}/v1/jobs",
        json={"model": MODEL, "input": {"prompt": "p", "reference_audios": ["https://x/a.mp3"]}},
        headers=mindvideo.headers,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["field"] == "input.reference_audios"
    assert "reference_images or reference_videos" in error["message"]
    assert (await _creates(mindvideo))["attempts"] == 0


async def test_posted_callback_is_refused_even_with_the_right_token(mindvideo: Stack) -> None:
    job = await _submitted(mindvideo)
    record = await mindvideo.store.get_job(job["id"])
    body = json.dumps({"task_id": job["provider_task_id"], "status": "succeeded", "output": {"videos": []}})
    response = await mindvideo.client.post(
        f"{mindvideo.url}/webhooks/mindvideo/{job['id']}/{record.callback_token}",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert (await mindvideo.job(job["id"]))["status"] == "queued"


async def test_cancellation_on_the_platform_is_seen_by_polling(mindvideo: Stack) -> None:
    job = await _submitted(mindvideo)
    await mindvideo.sandbox("mindvideo", "POST", f"/_sandbox/tasks/{job['provider_task_id']}/cancel")
    done = await mindvideo.wait_for(job["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "cancelled"
    assert done["cost"]["usd_charged"] == 0


async def test_models_list_the_mindvideo_capabilities(mindvideo: Stack) -> None:
    response = await mindvideo.client.get(f"{mindvideo.url}/v1/models", headers=mindvideo.headers)
    model = {m["id"]: m for m in response.json()["data"]}[MODEL]
    assert model["available"] is True
    capabilities = model["capabilities"]
    assert capabilities["resolutions"] == ["480p", "720p"]
    assert capabilities["durations"] == list(range(4, 16))
    assert capabilities["seed_range"] == {"min": 0, "max": 2147483647}
    assert capabilities["callbacks"] is False
    assert "negative_prompt" not in capabilities["inputs"]
    assert model["price"]["unit"] == "usd"
