"""imini end to end over real HTTP: POST /v1/jobs → dispatcher → emulator → poller → SSE (imini has no webhooks)."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from sandbox import SandboxKnobs
from sandbox.media import result_path
from tests.harness import collect_events, stack

MODEL = "imini/doubao/seedance-2.0"
PENDING = SandboxKnobs(processing_after_s=30, complete_after_s=60)


async def test_job_succeeds_by_polling_and_reaches_sse_subscriber(tmp_path: Path) -> None:
    # The first poll (1.6-2.4 s) sees `processing`; the second (at least 4 s) sees the task finished at 3 s.
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=3.0)
    async with stack(tmp_path, providers=("imini",), knobs=knobs) as running:
        received: list[dict[str, Any]] = []
        connected = asyncio.Event()
        listener = asyncio.create_task(
            collect_events(running, f"{running.url}/v1/events", "job.succeeded", received, connected)
        )
        await connected.wait()  # a live subscriber, connected before the job exists
        job = await running.submit(model=MODEL, resolution="720p", aspect_ratio="16:9", seed=4294967295)
        assert job["status"] == "queued"
        async with asyncio.timeout(15):
            await listener
        creates = await running.sandbox("imini", "GET", "/_sandbox/creates")
        [task] = (await running.sandbox("imini", "GET", "/_sandbox/tasks"))["tasks"]

    assert [e["type"] for e in received] == ["job.created", "job.submitted", "job.processing", "job.succeeded"]
    assert {e["job"]["id"] for e in received} == {job["id"]}
    final = received[-1]["job"]
    assert final["model"] == MODEL
    assert final["provider"] == "imini"
    assert re.fullmatch(r"task_\d{19}", final["provider_task_id"])
    assert final["provider_task_id"] == task["task_id"]
    [video] = final["output"]["videos"]
    assert (result_path(video["url"]), result_path(video["thumbnail_url"])) == (
        f"videos/{task['task_id']}.mp4",
        f"covers/{task['task_id']}.jpg",
    )
    assert final["output"]["last_frame_url"] is None
    assert final["error"] is None
    assert final["cost"] == {
        "credits_estimate": None,
        "usd_estimate": None,
        "credits_charged": None,
        "usd_charged": None,
    }
    assert task["polls"] >= 2
    # The upstream payload used imini's names and casing, with audio turned off explicitly.
    assert creates["accepted"][0]["body"] == {
        "model": "doubao/seedance-2.0",
        "prompt": "a drone shot of waves",
        "resolution": "720P",
        "aspect_ratio": "16:9",
        "duration": 5,
        "generate_audio": False,
        "extra_params": {"seed": 4294967295},
    }


async def test_model_filter_takes_the_two_slash_model_id(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("imini", "seedancee2"), knobs=PENDING) as running:
        imini_job = await running.submit(model=MODEL)
        await running.submit(model="seedancee2/mini")
        url = f"{running.url}/v1/jobs"
        plain = await running.client.get(url, params={"model": MODEL}, headers=running.headers)
        encoded = await running.client.get(f"{url}?model=imini%2Fdoubao%2Fseedance-2.0", headers=running.headers)
        by_provider = await running.client.get(url, params={"provider": "imini"}, headers=running.headers)
    for response in (plain, encoded, by_provider):
        assert response.status_code == 200
        assert [job["id"] for job in response.json()["data"]] == [imini_job["id"]]


async def test_models_lists_imini_without_callbacks_or_prices(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("imini",)) as running:
        response = await running.client.get(f"{running.url}/v1/models", headers=running.headers)
    [model] = [m for m in response.json()["data"] if m["id"] == MODEL]
    assert model["available"] is True
    assert model["capabilities"]["resolutions"] == ["480p", "720p"]
    assert model["capabilities"]["default_resolution"] == "720p"
    assert model["capabilities"]["callbacks"] is False
    assert model["capabilities"]["seed_range"] == {"min": -1, "max": 4294967295}
    assert model["price"]["per_second"] == {}
    assert "no price table" in model["price"]["note"]


async def test_an_alias_resolves_to_the_imini_model(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("imini",), knobs=PENDING, model_aliases={"seedance-2": MODEL}) as running:
        job = await running.submit(model="seedance-2")
        current = await running.accepted(job["id"], timeout=10)
    assert (job["model"], job["provider"]) == (MODEL, "imini")
    assert current["provider_task_id"].startswith("task_")


async def test_requests_imini_cannot_serve_are_refused_before_sending(tmp_path: Path) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"resolution": "1080p"}, "input.resolution"),
        ({"reference_audios": ["https://cdn.example.com/beat.mp3"]}, "input.reference_audios"),
        ({"reference_videos": ["data:video/mp4;base64,AAAA"]}, "input.reference_videos"),
        ({"last_frame": "https://cdn.example.com/z.png"}, "input.last_frame"),
    ]
    async with stack(tmp_path, providers=("imini",)) as running:
        responses = [
            await running.client.post(
                f"{running.url}/v1/jobs",
                json={"model": MODEL, "input": {"prompt": "waves", **given}},
                headers=running.headers,
            )
            for given, _ in refused
        ]
        creates = await running.sandbox("imini", "GET", "/_sandbox/creates")
    for response, (_, field) in zip(responses, refused, strict=True):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["details"]["field"] == field
        assert field in response.json()["error"]["message"]
    assert creates["attempts"] == 0


async def test_provider_failure_keeps_imini_code_and_request_id(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, failure_rate=1.0)
    async with stack(tmp_path, providers=("imini",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "generation_failed"
    assert done["error"]["provider_code"] == "GENERATION_FAILED"
    assert "imini request_id " in done["error"]["message"]


class _LoseCreateAnswers(httpx.AsyncBaseTransport):
    """Delivers every request, but answers a create with a read timeout, as if the answer were lost."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/videos/generate":
            await response.aclose()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_lost_create_answer_fails_the_job_without_resending(tmp_path: Path) -> None:
    async with (
        httpx.AsyncClient(transport=_LoseCreateAnswers()) as lossy,
        stack(tmp_path, providers=("imini",), knobs=PENDING, http_client=lossy) as running,
    ):
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        creates = await running.sandbox("imini", "GET", "/_sandbox/creates")
    assert done["error"]["code"] == "submit_outcome_unknown"
    assert done["provider_task_id"] is None
    assert len(creates["accepted"]) == 1  # created upstream once, and never sent again


async def test_rate_limited_create_is_retried_after_at_least_five_seconds(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, burst_429=1)
    async with stack(tmp_path, providers=("imini",), knobs=knobs) as running:
        job = await running.submit(model=MODEL)
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        events = {e.type: e.created_at for e in await running.store.events_after(0, job_id=job["id"])}
        creates = await running.sandbox("imini", "GET", "/_sandbox/creates")
    assert done["status"] == "succeeded"
    assert (creates["attempts"], len(creates["accepted"])) == (2, 1)
    waited = datetime.fromisoformat(events["job.submitted"]) - datetime.fromisoformat(events["job.created"])
    assert waited.total_seconds() >= 5.0


async def test_posts_to_the_callback_url_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("imini",), knobs=PENDING) as running:
        job = await running.accepted((await running.submit(model=MODEL))["id"], timeout=10)
        record = await running.store.get_job(job["id"])
        body = json.dumps({"task_id": job["provider_task_id"], "status": "succeeded", "videos": []})
        base = f"{running.url}/webhooks/imini/{job['id']}"
        with_token = await running.client.post(f"{base}/{record.callback_token}", content=body)
        wrong_token = await running.client.post(f"{base}/not-the-token", content=body)
        after = await running.job(job["id"])
    assert with_token.status_code == 401
    assert with_token.json()["error"]["details"]["reason"] == "signing_not_configured"
    assert wrong_token.status_code == 401
    assert wrong_token.json()["error"]["details"]["reason"] == "invalid_token"
    assert after["status"] == "queued"
    assert after["output"] is None
