"""Contract tests of the imini emulator against seed 003 and providers.md §4: what an adapter would observe."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from sandbox.imini import create_imini_sandbox
from sandbox.knobs import SandboxKnobs
from sandbox.media import result_path
from tests.sandbox.conftest import serve

API_KEY = "sk-imini-sandbox"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.15)
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
TASK_KEYS = ["task_id", "status", "model", "created_at", "completed_at", "videos", "error", "request_id"]
ERROR_KEYS = ["code", "message", "status", "request_id"]
IMAGE = "https://cdn.example.com/a.png"
VIDEO = "https://cdn.example.com/clip.mp4"
AUDIO = "https://cdn.example.com/beat.mp3"


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "doubao/seedance-2.0", "prompt": "A slow pan across a misty mountain valley", **fields}


def image(url: str = IMAGE, kind: str = "asset") -> dict[str, str]:
    return {"url": url, "reference_type": kind}


async def create(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/videos/generate", headers=AUTH, json=payload)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def poll(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/videos/tasks/{task_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert list(response.json()) == ["error"]
    assert list(error) == ERROR_KEYS
    assert error["code"] == code
    assert error["status"] == status
    assert error["message"]
    uuid.UUID(error["request_id"])


# -- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_bearer_key_is_accepted(scheme: str) -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        response = await client.post(
            "/v1/videos/generate", headers={"Authorization": f"{scheme} {API_KEY}"}, json=body()
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"x-api-key": API_KEY}, {"Authorization": f"Token {API_KEY}"}],
    ids=["missing", "wrong-key", "x-api-key", "token-scheme"],
)
async def test_other_credentials_get_401(headers: dict[str, str]) -> None:
    async with serve(create_imini_sandbox()) as client:
        responses = [
            await client.post("/v1/videos/generate", headers=headers, json=body()),
            await client.get("/v1/videos/tasks/task_2044275355061448704", headers=headers),
        ]
    for response in responses:
        assert_error(response, 401, "UNAUTHORIZED")


# -- create ---------------------------------------------------------------------------------------------


async def test_create_answers_the_documented_shape_without_a_status() -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        created = await create(client, body(resolution="720P", aspect_ratio="16:9", duration=5))
    assert list(created) == ["task_id", "model", "created_at", "request_id"]
    assert re.fullmatch(r"task_\d{19}", created["task_id"])
    assert int(created["task_id"].removeprefix("task_")) > 2**53  # a float would corrupt it (trap 30)
    assert created["model"] == "doubao/seedance-2.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", created["created_at"])
    uuid.UUID(created["request_id"])


async def test_full_documented_request_is_accepted() -> None:
    payload = body(
        resolution="480P",
        aspect_ratio="9:16",
        duration=15,
        generate_audio=False,
        reference_images=[image(), image("data:image/png;base64,iVBORw0KGgo=")],
        reference_videos=[{"url": VIDEO}],
        reference_audios=[{"url": AUDIO}],
        extra_params={"seed": 4294967295, "watermark": True, "return_last_frame": True},
    )
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        await create(client, payload)
        accepted = (await client.get("/_sandbox/creates")).json()["accepted"]
    assert accepted[0]["body"] == payload


@pytest.mark.parametrize(
    "references",
    [
        [image(kind="first_frame")],
        [image(kind="first_frame"), image("https://cdn.example.com/z.png", "last_frame")],
        [image() for _ in range(9)],
    ],
    ids=["first-frame", "first-and-last", "nine-assets"],
)
async def test_documented_reference_modes_are_accepted(references: list[dict[str, str]]) -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        await create(client, body(reference_images=references))


async def test_prompt_may_be_left_out_when_references_are_given() -> None:
    payload = body(reference_images=[image(kind="first_frame")])
    del payload["prompt"]
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        await create(client, payload)


async def test_generate_audio_is_on_unless_sent_false() -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        await create(client, body())
        await create(client, body(generate_audio=False))
        tasks = (await client.get("/_sandbox/tasks")).json()["tasks"]
    assert [task["effective"]["generate_audio"] for task in tasks] == [True, False]


@pytest.mark.parametrize(
    "payload",
    [
        body(resolution="720p"),
        body(resolution="480p"),
        body(resolution="1080P"),
        body(resolution=None),
        body(aspect_ratio="9:21"),
        body(duration=3),
        body(duration=16),
        body(duration="5"),
        body(duration=5.5),
        body(generate_audio="yes"),
        body(seed=42),
        body(watermark=True),
        body(return_last_frame=True),
        body(callback_url="https://hooks.example.com/imini"),
        body(negative_prompt="blurry"),
        {**body(), "model": "doubao/seedance-2.0-pro"},
        {"prompt": "no model"},
        body(extra_params={"seed": -2}),
        body(extra_params={"seed": 2**32}),
        body(extra_params={"camera_fixed": True}),
        body(reference_images=[IMAGE]),
        body(reference_images=[image(kind="reference_image")]),
        body(reference_images=[{"url": IMAGE}]),
        body(reference_images=[image() for _ in range(10)]),
        body(reference_images=[image(kind="last_frame")]),
        body(reference_images=[image(kind="first_frame"), image(kind="first_frame")]),
        body(reference_images=[image(kind="first_frame"), image()]),
        body(reference_images=[image(kind="first_frame")], reference_videos=[{"url": VIDEO}]),
        body(reference_images=[image(kind="first_frame")], reference_audios=[{"url": AUDIO}]),
        body(reference_images=[image("ftp://cdn.example.com/a.png")]),
        body(reference_videos=[{"url": "data:video/mp4;base64,AAAA"}]),
        body(reference_videos=[{"url": VIDEO} for _ in range(4)]),
        body(reference_videos=[VIDEO]),
        body(reference_images=[image()], reference_audios=[{"url": AUDIO} for _ in range(4)]),
        body(reference_audios=[{"url": AUDIO}]),
    ],
)
async def test_invalid_create_gets_400_invalid_parameter(payload: dict[str, Any]) -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        response = await client.post("/v1/videos/generate", headers=AUTH, json=payload)
        creates = (await client.get("/_sandbox/creates")).json()
    assert_error(response, 400, "INVALID_PARAMETER")
    assert creates == {"attempts": 1, "accepted": []}


@pytest.mark.parametrize("payload", [body(prompt="   "), {"model": "doubao/seedance-2.0"}], ids=["blank", "nothing"])
async def test_nothing_to_generate_from_gets_400_invalid_prompt(payload: dict[str, Any]) -> None:
    async with serve(create_imini_sandbox()) as client:
        response = await client.post("/v1/videos/generate", headers=AUTH, json=payload)
    assert_error(response, 400, "INVALID_PROMPT")


async def test_malformed_json_gets_400() -> None:
    async with serve(create_imini_sandbox()) as client:
        response = await client.post(
            "/v1/videos/generate", headers={**AUTH, "Content-Type": "application/json"}, content=b"{model:"
        )
    assert_error(response, 400, "INVALID_PARAMETER")


async def test_exhausted_quota_gets_403_insufficient_credits() -> None:
    async with serve(create_imini_sandbox(knobs=SLOW, task_quota=1)) as client:
        await create(client, body())
        response = await client.post("/v1/videos/generate", headers=AUTH, json=body())
    assert_error(response, 403, "INSUFFICIENT_CREDITS")


# -- status ---------------------------------------------------------------------------------------------


async def test_status_moves_queued_processing_succeeded() -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3)
    async with serve(create_imini_sandbox(knobs=knobs)) as client:
        created = await create(client, body(resolution="720P", aspect_ratio="16:9", duration=6))
        queued = await poll(client, created["task_id"])
        await asyncio.sleep(0.15)
        processing = await poll(client, created["task_id"])
        await asyncio.sleep(0.2)
        succeeded = await poll(client, created["task_id"])

    for task in (queued, processing, succeeded):
        assert list(task) == TASK_KEYS
        assert task["task_id"] == created["task_id"]
        assert task["created_at"] == created["created_at"]
        assert re.fullmatch(r"req_[0-9a-f]{32}", task["request_id"])
    assert (queued["status"], processing["status"], succeeded["status"]) == ("queued", "processing", "succeeded")
    assert queued["videos"] is queued["error"] is queued["completed_at"] is None
    assert processing["videos"] is processing["error"] is processing["completed_at"] is None
    assert succeeded["error"] is None
    assert succeeded["completed_at"] > succeeded["created_at"]
    [video] = succeeded["videos"]
    assert list(video) == ["url", "width", "height", "duration", "cover_url"]
    assert video["url"].endswith(f"/{created['task_id']}.mp4")
    assert video["cover_url"].endswith(f"/{created['task_id']}.jpg")
    assert (video["width"], video["height"], video["duration"]) == (1280, 720, 6)


async def test_requested_last_frame_appears_on_the_video_by_default() -> None:
    async with serve(create_imini_sandbox(knobs=QUICK)) as client:
        created = await create(client, body(extra_params={"return_last_frame": True}))
        await asyncio.sleep(0.2)
        task = await poll(client, created["task_id"])
    assert list(task) == TASK_KEYS
    assert result_path(task["videos"][0]["last_frame_url"]) == f"frames/{created['task_id']}.png"


async def test_requested_last_frame_can_appear_at_the_top_level() -> None:
    async with serve(create_imini_sandbox(knobs=QUICK, last_frame_placement="top")) as client:
        created = await create(client, body(extra_params={"return_last_frame": True}))
        await asyncio.sleep(0.2)
        task = await poll(client, created["task_id"])
    assert list(task) == [*TASK_KEYS, "last_frame_url"]
    assert result_path(task["last_frame_url"]) == f"frames/{created['task_id']}.png"
    assert "last_frame_url" not in task["videos"][0]


async def test_last_frame_is_absent_unless_requested() -> None:
    async with serve(create_imini_sandbox(knobs=QUICK, last_frame_placement="top")) as client:
        created = await create(client, body())
        await asyncio.sleep(0.2)
        task = await poll(client, created["task_id"])
    assert list(task) == TASK_KEYS
    assert "last_frame_url" not in task["videos"][0]


async def test_failure_rate_one_gives_failed_with_error_envelope() -> None:
    knobs = SandboxKnobs(processing_after_s=0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_imini_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.1)
        task = await poll(client, created["task_id"])
    assert task["status"] == "failed"
    assert task["videos"] is None
    assert task["completed_at"] is not None
    assert list(task["error"]) == ERROR_KEYS
    assert task["error"]["code"] == "GENERATION_FAILED"
    uuid.UUID(task["error"]["request_id"])


async def test_unknown_task_and_other_accounts_task_get_404_task_not_found() -> None:
    app = create_imini_sandbox(knobs=SLOW, extra_api_keys=["sk-imini-other"])
    async with serve(app) as client:
        created = await create(client, body())
        responses = [
            await client.get("/v1/videos/tasks/task_1000000000000000000", headers=AUTH),
            await client.get(
                f"/v1/videos/tasks/{created['task_id']}", headers={"Authorization": "Bearer sk-imini-other"}
            ),
        ]
    for response in responses:
        assert_error(response, 404, "TASK_NOT_FOUND")


async def test_unknown_route_keeps_the_error_envelope() -> None:
    async with serve(create_imini_sandbox()) as client:
        response = await client.post("/v1/videos/generations", headers=AUTH, json=body())
    assert_error(response, 404, "NOT_FOUND")


# -- chaos ----------------------------------------------------------------------------------------------


async def test_burst_429_answers_rate_limited_then_recovers() -> None:
    async with serve(create_imini_sandbox(knobs=SandboxKnobs(burst_429=2, complete_after_s=60))) as client:
        responses = [await client.post("/v1/videos/generate", headers=AUTH, json=body()) for _ in range(3)]
    assert [response.status_code for response in responses] == [429, 429, 200]
    assert_error(responses[0], 429, "RATE_LIMITED")
    assert "retry-after" not in responses[0].headers


async def test_burst_5xx_answers_internal_error_and_creates_nothing() -> None:
    async with serve(create_imini_sandbox(knobs=SandboxKnobs(burst_5xx=1, complete_after_s=60))) as client:
        first = await client.post("/v1/videos/generate", headers=AUTH, json=body())
        second = await create(client, body())
        creates = (await client.get("/_sandbox/creates")).json()
    assert_error(first, 500, "INTERNAL_ERROR")
    assert creates["attempts"] == 2
    assert [entry["task_id"] for entry in creates["accepted"]] == [second["task_id"]]


async def test_latency_delays_answers() -> None:
    async with serve(create_imini_sandbox(knobs=SandboxKnobs(latency_s=0.2))) as client:
        started = time.monotonic()
        await client.get("/v1/videos/tasks/task_1000000000000000000", headers=AUTH)
        assert time.monotonic() - started >= 0.2


async def test_callback_knobs_do_not_apply() -> None:
    knobs = SandboxKnobs(processing_after_s=0, complete_after_s=0.05, drop_callback_rate=1.0, out_of_order_rate=1.0)
    async with serve(create_imini_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.1)
        task = await poll(client, created["task_id"])
        callbacks = (await client.get("/_sandbox/callbacks")).json()
    assert task["status"] == "succeeded"
    assert callbacks == {"callbacks": []}


# -- sandbox control --------------------------------------------------------------------------------------


async def test_knobs_can_be_replaced_at_runtime() -> None:
    async with serve(create_imini_sandbox()) as client:
        before = (await client.get("/_sandbox/knobs")).json()
        put = await client.put("/_sandbox/knobs", json={"burst_429": 1})
        limited = await client.post("/v1/videos/generate", headers=AUTH, json=body())
        typo = await client.put("/_sandbox/knobs", json={"burst_492": 1})
        after = (await client.get("/_sandbox/knobs")).json()
    assert before["burst_429"] == 0
    assert put.json()["burst_429"] == 1
    assert limited.status_code == 429
    assert typo.status_code == 400
    assert after["burst_429"] == 1


async def test_force_complete_and_fail_then_409() -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        first = (await create(client, body()))["task_id"]
        second = (await create(client, body()))["task_id"]
        completed = await client.post(f"/_sandbox/tasks/{first}/complete")
        failed = await client.post(f"/_sandbox/tasks/{second}/fail")
        again = await client.post(f"/_sandbox/tasks/{first}/fail")
        missing = await client.post("/_sandbox/tasks/task_1000000000000000000/complete")
        polled = await poll(client, second)
    assert completed.json()["status"] == "succeeded"
    assert failed.json()["status"] == "failed"
    assert polled["status"] == "failed"
    assert again.status_code == 409
    assert missing.status_code == 404


async def test_tasks_log_counts_polls() -> None:
    async with serve(create_imini_sandbox(knobs=SLOW)) as client:
        created = await create(client, body())
        for _ in range(3):
            await poll(client, created["task_id"])
        [task] = (await client.get("/_sandbox/tasks")).json()["tasks"]
    assert task["task_id"] == created["task_id"]
    assert task["polls"] == 3
    assert task["request"] == body()
