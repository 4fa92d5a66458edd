"""End to end over real HTTP: POST /v1/jobs → dispatcher → emulator → signed callback → SSE."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from httpx_sse import aconnect_sse

from sandbox import SandboxKnobs
from tests.harness import Stack, collect_events, stack


async def test_job_succeeds_through_signed_callback_and_reaches_sse_subscriber(seedance: Stack) -> None:
    received: list[dict[str, Any]] = []
    connected = asyncio.Event()
    listener = asyncio.create_task(
        collect_events(seedance, f"{seedance.url}/v1/events", "job.succeeded", received, connected)
    )
    await connected.wait()  # a live subscriber, connected before the job exists
    job = await seedance.submit(resolution="720p", aspect_ratio="16:9")
    assert job["status"] == "queued"
    assert job["id"].startswith("job_")
    async with asyncio.timeout(10):
        await listener
    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.succeeded"]
    assert {e["job"]["id"] for e in received} == {job["id"]}
    final = received[-1]["job"]
    assert final["status"] == "succeeded"
    assert final["output"]["videos"][0]["url"].endswith(".mp4")
    assert final["cost"] == {
        "credits_estimate": 100,
        "usd_estimate": None,
        "credits_charged": 100,
        "usd_charged": None,
        "credits_reserved": 100,
    }
    callbacks = await seedance.sandbox("seedancee2", "GET", "/_sandbox/callbacks")
    assert [c["status_code"] for c in callbacks["callbacks"] if c["kind"] == "delivery"] == [200]
    # The upstream payload used Seedancee2's own names, and carried Reelay's job id for reconciliation.
    creates = await seedance.sandbox("seedancee2", "GET", "/_sandbox/creates")
    body = creates["accepted"][0]["body"]
    assert body["model"] == "pro"
    assert body["input"] == {
        "prompt": "a drone shot of waves",
        "duration": 5,
        "resolution": "720p",
        "generate_audio": False,
        "aspect_ratio": "16:9",
    }
    assert body["metadata"] == {"reelay_job_id": job["id"]}
    assert body["callback_url"] == f"{seedance.url}/webhooks/seedancee2"


async def test_job_event_stream_replays_and_ends_after_terminal_event(seedance: Stack) -> None:
    job = await seedance.submit()
    await seedance.wait_for(job["id"], {"succeeded"})
    async with aconnect_sse(
        seedance.client, "GET", f"{seedance.url}/v1/jobs/{job['id']}/events", headers=seedance.headers
    ) as source:
        types = [sse.event async for sse in source.aiter_sse() if sse.data]
    assert types == ["job.created", "job.submitted", "job.succeeded"]


async def test_dropped_callback_is_recovered_by_polling(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3, drop_callback_rate=1.0)
    async with stack(tmp_path, knobs=knobs, callback_grace_seconds=1.0) as running:
        job = await running.submit(model="seedancee2/mini", resolution="480p")
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=15)
        assert done["status"] == "succeeded"
        callbacks = await running.sandbox("seedancee2", "GET", "/_sandbox/callbacks")
        assert {c["kind"] for c in callbacks["callbacks"]} == {"dropped"}
        assert done["cost"]["credits_charged"] == 25


async def test_provider_failure_is_reported_with_provider_code(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, failure_rate=1.0)
    async with stack(tmp_path, knobs=knobs) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        assert done["status"] == "failed"
        assert done["error"]["code"] == "generation_failed"
        assert done["error"]["provider_code"] == "generation_failed"
        assert "could not be generated" in done["error"]["message"]
        assert done["cost"]["credits_charged"] == 0


async def test_return_last_frame_is_completed_from_status_endpoint(seedance: Stack) -> None:
    # The completed webhook omits last_frame_url; Reelay confirms by polling when the caller asked for it.
    job = await seedance.submit(return_last_frame=True)
    done = await seedance.wait_for(job["id"], {"succeeded"})
    assert done["output"]["last_frame_url"].startswith(seedance.sandbox_urls["seedancee2"] + "/_media/")
