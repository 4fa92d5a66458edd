"""Contract tests of the MindVideo emulator against seed 001: what an adapter would observe."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from sandbox.knobs import SandboxKnobs
from sandbox.mindvideo import create_mindvideo_sandbox
from tests.sandbox.conftest import serve

API_KEY = "mv_live_sandbox"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.15)
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
MODEL = "doubao-seedance-2-0-fast"
DOC_EXAMPLE = {
    "model": MODEL,
    "input": {
        "prompt": "A cinematic tracking shot of a futuristic city street after rain",
        "size": "16:9",
        "resolution": "720p",
        "duration": 5,
        "generate_audio": True,
    },
}
FAILURE = {
    "code": "generation_failed",
    "message": "Video generation failed upstream. Please adjust the input and try again.",
}


def body(**input_fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": {"prompt": "Waves on black volcanic rocks", **input_fields}}


def roles(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"url": url, "role": role} for role, url in pairs]


async def create(
    client: httpx.AsyncClient, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await client.post("/api/v1/tasks", headers={**AUTH, **(headers or {})}, json=payload)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def status(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/tasks/{task_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


# -- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_bearer_key_is_accepted(scheme: str) -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        response = await client.post("/api/v1/tasks", headers={"Authorization": f"{scheme} {API_KEY}"}, json=body())
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer mv_live_wrong"},
        {"x-api-key": API_KEY},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": API_KEY},
    ],
    ids=["missing", "wrong-key", "x-api-key-undocumented", "token-scheme", "no-scheme"],
)
async def test_bad_credentials_get_401_with_json_error(headers: dict[str, str]) -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        responses = [
            await client.post("/api/v1/tasks", headers=headers, json=body()),
            await client.get("/api/v1/tasks/task_x", headers=headers),
            await client.get("/api/v1/tasks/task_x/events", headers=headers),
        ]
    for response in responses:
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": "invalid_api_key", "message": "API key is missing, invalid, or disabled."}
        }


# -- create ---------------------------------------------------------------------------------------------


async def test_doc_example_returns_the_create_shape() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        response = await client.post("/api/v1/tasks", headers={**AUTH, "Idempotency-Key": "task_1"}, json=DOC_EXAMPLE)
    assert response.status_code == 200
    data = response.json()
    assert list(data) == ["request_id", "task_id", "status", "cost_estimate"]
    assert re.fullmatch(r"req_[0-9a-z]{26}", data["request_id"])
    assert re.fullmatch(r"task_[0-9a-z]{26}", data["task_id"])
    assert data["status"] == "queued"
    assert data["cost_estimate"] == 0.1314


@pytest.mark.parametrize(
    ("fields", "cost"),
    [
        ({}, 0.0657),  # schema defaults: 480p, 5 s (the doc's example figure)
        ({"resolution": "480p", "duration": 4}, 0.0526),
        ({"resolution": "720p", "duration": 15}, 0.3942),
    ],
)
async def test_cost_estimate_follows_resolution_and_duration(fields: dict[str, Any], cost: float) -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        data = await create(client, body(**fields))
    assert data["cost_estimate"] == cost


@pytest.mark.parametrize(
    "payload",
    [
        body(
            size="adaptive",
            seed=2147483647,
            watermark=True,
            camera_fixed=True,
            return_last_frame=True,
            tools=[{"type": "web_search"}],
        ),
        body(seed=0),
        body(image_urls=[f"https://x/{i}.png" for i in range(9)], video_urls=["https://x/v.mp4"]),
        body(image_urls=["https://x/1.png"], audio_urls=["https://x/a.mp3"]),
        body(video_urls=["https://x/v.mp4"], audio_urls=[f"https://x/{i}.mp3" for i in range(3)]),
        body(image_with_roles=roles(("first_frame", "https://x/a.png"), ("last_frame", "https://x/b.png"))),
        body(
            image_with_roles=roles(("first_frame", "https://x/a.png"), ("reference_image", "https://x/r.png")),
        ),
        body(image_with_roles=roles(("reference_image", "https://x/r.png")), audio_urls=["https://x/a.mp3"]),
        body(image_urls=["data:image/png;base64,iVBORw0KGgo="]),
        body(prompt="p" * 4000),
    ],
    ids=[
        "every-scalar",
        "seed-zero",
        "nine-images-and-a-video",
        "audio-with-images",
        "audio-with-video",
        "first-and-last-frame",
        "frame-and-reference-role",
        "audio-with-reference-role",
        "data-uri",
        "longest-prompt",
    ],
)
async def test_valid_creates_are_accepted(payload: dict[str, Any]) -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        response = await client.post("/api/v1/tasks", headers=AUTH, json=payload)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "payload",
    [
        body(aspect_ratio="16:9"),
        body(negative_prompt="blur"),
        body(image_url="https://x/a.png"),
        {**body(), "callback_url": "https://hooks.example.com"},
        {**body(), "metadata": {"k": "v"}},
        {"input": {"prompt": "x"}},
        {"model": MODEL},
        {"model": "doubao-seedance-2-0", "input": {"prompt": "x"}},
        {"model": MODEL, "input": {"duration": 5}},
        body(prompt=""),
        body(prompt="p" * 4001),
        body(size="9:21"),
        body(size="16x9"),
        body(resolution="1080p"),
        body(resolution="720P"),
        body(duration=3),
        body(duration=16),
        body(duration="5"),
        body(duration=5.5),
        body(duration=-1),
        body(seed=-1),
        body(seed=2147483648),
        body(seed=None),
        body(generate_audio="yes"),
        body(watermark=None),
        body(image_urls=[f"https://x/{i}.png" for i in range(10)]),
        body(image_with_roles=roles(*[("reference_image", f"https://x/{i}.png") for i in range(10)])),
        body(image_with_roles=roles(("start_frame", "https://x/a.png"))),
        body(image_with_roles=[{"url": "https://x/a.png", "role": "first_frame", "weight": 1}]),
        body(image_with_roles=roles(("first_frame", "https://x/a.png"), ("first_frame", "https://x/b.png"))),
        body(video_urls=[f"https://x/{i}.mp4" for i in range(4)]),
        body(audio_urls=[f"https://x/{i}.mp3" for i in range(4)]),
        body(tools=[{"type": "code_interpreter"}]),
        body(tools=[{"type": "web_search", "limit": 3}]),
        body(image_urls=["https://x/1.png"], image_with_roles=roles(("reference_image", "https://x/2.png"))),
        body(image_urls=[], image_with_roles=roles(("first_frame", "https://x/a.png"))),
        body(image_with_roles=roles(("first_frame", "https://x/a.png")), video_urls=["https://x/v.mp4"]),
        body(image_with_roles=roles(("last_frame", "https://x/b.png")), audio_urls=["https://x/a.mp3"]),
        body(audio_urls=["https://x/a.mp3"]),
    ],
    ids=[
        "aspect_ratio-is-size-here",
        "negative_prompt-unknown",
        "unknown-input-field",
        "callback_url-envelope",
        "metadata-envelope",
        "no-model",
        "no-input",
        "unknown-model",
        "no-prompt",
        "empty-prompt",
        "prompt-too-long",
        "size-9:21",
        "size-spelling",
        "resolution-1080p",
        "resolution-uppercase",
        "duration-3",
        "duration-16",
        "duration-string",
        "duration-float",
        "duration-auto",
        "seed-negative",
        "seed-beyond-int32",
        "seed-null",
        "audio-string",
        "watermark-null",
        "ten-image_urls",
        "ten-image_with_roles",
        "unknown-role",
        "unknown-role-item-field",
        "two-first-frames",
        "four-videos",
        "four-audios",
        "unknown-tool",
        "unknown-tool-field",
        "image_urls-with-image_with_roles",
        "empty-image_urls-with-image_with_roles",
        "first-frame-with-video",
        "last-frame-with-audio",
        "audio-alone",
    ],
)
async def test_invalid_create_gets_400(payload: dict[str, Any]) -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        response = await client.post("/api/v1/tasks", headers=AUTH, json=payload)
        creates = (await client.get("/_sandbox/creates")).json()
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"code", "message"}
    assert response.json()["error"]["code"] in {"invalid_request", "model_not_found"}
    assert creates["accepted"] == []


async def test_malformed_json_gets_400() -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        response = await client.post(
            "/api/v1/tasks", headers={**AUTH, "Content-Type": "application/json"}, content=b"{model:"
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_unknown_model_gets_model_not_found() -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        response = await client.post("/api/v1/tasks", headers=AUTH, json={**body(), "model": "mindvideo/fast"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_found"


# -- idempotency ------------------------------------------------------------------------------------------


async def test_same_key_and_payload_returns_the_original_task_without_a_new_one() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        first = await create(client, body(), {"Idempotency-Key": "job_1"})
        # Same payload, keys in another order: still the same request.
        reordered = {"input": dict(reversed(body()["input"].items())), "model": MODEL}
        second = await create(client, reordered, {"Idempotency-Key": "job_1"})
        creates = (await client.get("/_sandbox/creates")).json()
    assert second["task_id"] == first["task_id"]
    assert second["cost_estimate"] == first["cost_estimate"]
    assert second["request_id"] != first["request_id"]
    assert creates["attempts"] == 2
    assert [entry["id"] for entry in creates["accepted"]] == [first["task_id"]]
    assert creates["replayed"] == [{"id": first["task_id"], "idempotency_key": "job_1"}]


async def test_replay_reports_the_task_status_as_it_is_now() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        first = await create(client, body(), {"Idempotency-Key": "job_1"})
        await client.post(f"/_sandbox/tasks/{first['task_id']}/complete")
        second = await create(client, body(), {"Idempotency-Key": "job_1"})
    assert second["status"] == "succeeded"


async def test_same_key_with_different_input_gets_409() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        await create(client, body(), {"Idempotency-Key": "job_1"})
        response = await client.post(
            "/api/v1/tasks", headers={**AUTH, "Idempotency-Key": "job_1"}, json=body(duration=10)
        )
        creates = (await client.get("/_sandbox/creates")).json()
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert len(creates["accepted"]) == 1


async def test_without_a_key_every_create_is_a_new_task() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        first = await create(client, body())
        second = await create(client, body())
    assert first["task_id"] != second["task_id"]


async def test_idempotency_keys_are_scoped_to_the_account() -> None:
    app = create_mindvideo_sandbox(knobs=SLOW, extra_api_keys=["mv_live_other"])
    async with serve(app) as client:
        mine = await create(client, body(), {"Idempotency-Key": "job_1"})
        theirs = await client.post(
            "/api/v1/tasks", headers={"Authorization": "Bearer mv_live_other", "Idempotency-Key": "job_1"}, json=body()
        )
    assert theirs.status_code == 200
    assert theirs.json()["task_id"] != mine["task_id"]


async def test_empty_idempotency_key_gets_400() -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        response = await client.post("/api/v1/tasks", headers={**AUTH, "Idempotency-Key": ""}, json=body())
    assert response.status_code == 400


# -- status ---------------------------------------------------------------------------------------------


async def test_status_moves_queued_processing_succeeded_with_documented_fields() -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3)
    async with serve(create_mindvideo_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        queued = await status(client, created["task_id"])
        await asyncio.sleep(0.15)
        processing = await status(client, created["task_id"])
        await asyncio.sleep(0.2)
        succeeded = await status(client, created["task_id"])
    expected_running = {
        "request_id": created["request_id"],
        "task_id": created["task_id"],
        "status": "queued",
        "cost_estimate": 0.0657,
    }
    assert queued == expected_running
    assert processing == {**expected_running, "status": "processing"}
    assert list(succeeded) == ["request_id", "task_id", "status", "cost_estimate", "cost_actual", "output"]
    assert succeeded["status"] == "succeeded"
    assert succeeded["cost_actual"] == 0.0657
    assert list(succeeded["output"]) == ["videos"]
    assert [list(video) for video in succeeded["output"]["videos"]] == [["url"]]
    assert succeeded["output"]["videos"][0]["url"].endswith(f"/{created['task_id']}.mp4")


async def test_last_frame_url_only_when_requested() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        created = await create(client, body(return_last_frame=True))
        await client.post(f"/_sandbox/tasks/{created['task_id']}/complete")
        data = await status(client, created["task_id"])
    assert data["output"]["last_frame_url"].startswith("https://")


async def test_failure_rate_one_gives_failed_with_error_object_and_no_charge() -> None:
    knobs = SandboxKnobs(processing_after_s=0.0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_mindvideo_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.1)
        data = await status(client, created["task_id"])
    assert data == {
        "request_id": created["request_id"],
        "task_id": created["task_id"],
        "status": "failed",
        "cost_estimate": 0.0657,
        "cost_actual": 0.0,
        "error": FAILURE,
    }


async def test_platform_side_cancel_reports_cancelled() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        created = await create(client, body())
        await client.post(f"/_sandbox/tasks/{created['task_id']}/cancel")
        data = await status(client, created["task_id"])
    assert data["status"] == "cancelled"
    assert "output" not in data
    assert "error" not in data


async def test_there_is_no_cancel_endpoint() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        created = await create(client, body())
        response = await client.post(f"/api/v1/tasks/{created['task_id']}/cancel", headers=AUTH)
    assert response.status_code in {404, 405}
    assert set(response.json()["error"]) == {"code", "message"}


async def test_unknown_task_and_other_accounts_task_get_404() -> None:
    app = create_mindvideo_sandbox(knobs=SLOW, extra_api_keys=["mv_live_other"])
    async with serve(app) as client:
        created = await create(client, body())
        other = {"Authorization": "Bearer mv_live_other"}
        responses = [
            await client.get("/api/v1/tasks/task_01jz8b7q4x8k2p9w3m5c6n7r8s", headers=AUTH),
            await client.get(f"/api/v1/tasks/{created['task_id']}", headers=other),
            await client.get(f"/api/v1/tasks/{created['task_id']}/events", headers=other),
        ]
    for response in responses:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"


# -- events ---------------------------------------------------------------------------------------------


async def test_events_list_status_changes_oldest_first() -> None:
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.1)
    async with serve(create_mindvideo_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        early = (await client.get(f"/api/v1/tasks/{created['task_id']}/events", headers=AUTH)).json()
        await asyncio.sleep(0.15)
        late = (await client.get(f"/api/v1/tasks/{created['task_id']}/events", headers=AUTH)).json()
    assert early == {
        "task_id": created["task_id"],
        "events": [{"status": "queued", "created_at": early["events"][0]["created_at"]}],
    }
    assert [event["status"] for event in late["events"]] == ["queued", "processing", "succeeded"]
    stamps = [event["created_at"] for event in late["events"]]
    assert stamps == sorted(stamps)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp) for stamp in stamps)


async def test_failed_event_carries_the_message_and_a_forced_task_skips_processing() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        created = await create(client, body())
        await client.post(f"/_sandbox/tasks/{created['task_id']}/fail")
        events = (await client.get(f"/api/v1/tasks/{created['task_id']}/events", headers=AUTH)).json()["events"]
    assert [event["status"] for event in events] == ["queued", "failed"]
    assert events[-1]["message"] == FAILURE["message"]


# -- chaos ----------------------------------------------------------------------------------------------


async def test_burst_429_then_recovers() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SandboxKnobs(burst_429=2))) as client:
        responses = [await client.get("/api/v1/tasks/task_x", headers=AUTH) for _ in range(3)]
    assert [response.status_code for response in responses] == [429, 429, 404]
    assert responses[0].headers["Retry-After"] == "1"
    assert responses[0].json() == {"error": {"code": "rate_limited", "message": "Too many requests."}}


async def test_the_429_asks_for_the_retry_after_knob() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SandboxKnobs(burst_429=1, retry_after_s=5))) as client:
        response = await client.get("/api/v1/tasks/task_x", headers=AUTH)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "5")


async def test_every_api_call_is_counted_in_the_second_it_arrived() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SandboxKnobs(burst_429=1))) as client:
        before = int(time.time())
        for _ in range(3):  # refused, then not found: each counts, as a provider's limit would count it
            await client.get("/api/v1/tasks/task_x", headers=AUTH)
        await client.get("/_sandbox/tasks")  # control routes are not the provider's API
        counted = (await client.get("/_sandbox/calls")).json()["per_second"]
    assert sum(counted.values()) == 3
    assert all(before <= int(second) <= time.time() for second in counted)


async def test_burst_5xx_creates_nothing() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SandboxKnobs(burst_5xx=1, complete_after_s=60))) as client:
        first = await client.post("/api/v1/tasks", headers={**AUTH, "Idempotency-Key": "job_1"}, json=body())
        second = await client.post("/api/v1/tasks", headers={**AUTH, "Idempotency-Key": "job_1"}, json=body())
        creates = (await client.get("/_sandbox/creates")).json()
    assert first.status_code == 500
    assert first.json() == {"error": {"code": "internal_error", "message": "Internal server error."}}
    assert second.status_code == 200
    assert creates["attempts"] == 2
    assert [entry["id"] for entry in creates["accepted"]] == [second.json()["task_id"]]
    assert creates["replayed"] == []


async def test_latency_delays_answers() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SandboxKnobs(latency_s=0.2))) as client:
        started = time.monotonic()
        await client.get("/api/v1/tasks/task_x", headers=AUTH)
        assert time.monotonic() - started >= 0.2


async def test_callback_knobs_have_nothing_to_act_on() -> None:
    knobs = SandboxKnobs(
        processing_after_s=0, complete_after_s=0.05, drop_callback_rate=1.0, duplicate_callback_rate=1.0
    )
    async with serve(create_mindvideo_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.1)
        data = await status(client, created["task_id"])
        callbacks = (await client.get("/_sandbox/callbacks")).json()
    assert data["status"] == "succeeded"
    assert callbacks == {"callbacks": []}


# -- sandbox control --------------------------------------------------------------------------------------


async def test_knobs_can_be_replaced_at_runtime() -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        before = (await client.get("/_sandbox/knobs")).json()
        put = await client.put("/_sandbox/knobs", json={"burst_429": 1, "failure_rate": 1.0})
        limited = await client.get("/api/v1/tasks/task_x", headers=AUTH)
        typo = await client.put("/_sandbox/knobs", json={"burst_492": 1})
        out_of_range = await client.put("/_sandbox/knobs", json={"failure_rate": 2})
        after = (await client.get("/_sandbox/knobs")).json()
    assert before["burst_429"] == 0
    assert put.json()["burst_429"] == 1
    assert limited.status_code == 429
    assert [typo.status_code, out_of_range.status_code] == [400, 400]
    assert after["failure_rate"] == 1.0


async def test_creates_and_tasks_logs_keep_bodies_and_keys_in_order() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        await create(client, body(), {"Idempotency-Key": "job_1"})
        await client.post("/api/v1/tasks", headers=AUTH, json=body(resolution="1080p"))
        await create(client, body(duration=10))
        creates = (await client.get("/_sandbox/creates")).json()
        tasks = (await client.get("/_sandbox/tasks")).json()["tasks"]
    assert creates["attempts"] == 3
    assert [(entry["idempotency_key"], entry["body"]) for entry in creates["accepted"]] == [
        ("job_1", body()),
        (None, body(duration=10)),
    ]
    assert [task["id"] for task in tasks] == [entry["id"] for entry in creates["accepted"]]
    assert tasks[0]["view"]["status"] == "queued"


async def test_force_complete_and_fail_then_409() -> None:
    async with serve(create_mindvideo_sandbox(knobs=SLOW)) as client:
        first = await create(client, body())
        second = await create(client, body())
        completed = await client.post(f"/_sandbox/tasks/{first['task_id']}/complete")
        failed = await client.post(f"/_sandbox/tasks/{second['task_id']}/fail")
        again = await client.post(f"/_sandbox/tasks/{first['task_id']}/cancel")
        missing = await client.post("/_sandbox/tasks/task_missing/complete")
    assert completed.json()["status"] == "succeeded"
    assert failed.json()["status"] == "failed"
    assert again.status_code == 409
    assert missing.status_code == 404


async def test_unknown_route_keeps_the_error_shape() -> None:
    async with serve(create_mindvideo_sandbox()) as client:
        response = await client.get("/api/v2/tasks", headers=AUTH)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message"}
