"""Contract tests of the Minuit emulator against seed 000: what an adapter would observe."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import pytest

from sandbox.knobs import SandboxKnobs
from sandbox.media import result_path
from sandbox.minuit import create_minuit_sandbox
from tests.sandbox.conftest import Receiver, eventually, serve

API_KEY = "mn_live_sandbox"
AUTH = {"Authorization": f"Token {API_KEY}"}
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.15)
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
CALLBACK_URL = "https://hooks.example.com/minuit/job_1/token"
IMAGE = "https://example.com/first-frame.jpg"
QUOTA_KEYS = [
    "cost",
    "rate_per_second",
    "duration",
    "resolution",
    "model",
    "template",
    "unit",
    "remaining",
    "total_credits",
    "used_credits",
]


def t2v(**fields: Any) -> dict[str, Any]:
    return {"template": "t2v_high_quality", "prompt": "Waves on black rocks", "moderation": "disabled", **fields}


def i2v(**fields: Any) -> dict[str, Any]:
    return {
        "template": "i2v_high_quality",
        "images": [IMAGE],
        "prompt": "Slow push-in",
        "moderation": "disabled",
        **fields,
    }


def wan(**fields: Any) -> dict[str, Any]:
    return {"model": "wan2.7-i2v-spicy", "image": IMAGE, "prompt": "Slow push-in", "moderation": "disabled", **fields}


def r2v(**fields: Any) -> dict[str, Any]:
    images = ["https://example.com/character-1.jpg", "https://example.com/character-2.jpg"]
    return {
        "template": "r2v_high_quality",
        "images": images,
        "prompt": "@1 and @2 walk",
        "moderation": "disabled",
        **fields,
    }


def states(receiver: Receiver) -> list[str]:
    return [body["state"] for body in receiver.bodies()]


async def create(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, headers=AUTH, json=payload)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def status(client: httpx.AsyncClient, task_id: str, headers: dict[str, str] = AUTH) -> httpx.Response:
    return await client.get(f"/ent/v2/tasks/{task_id}/creations", headers=headers)


# -- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [AUTH, {"x-api-key": API_KEY}, {"Authorization": f"token {API_KEY}"}])
async def test_documented_auth_headers_are_accepted(headers: dict[str, str]) -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        response = await client.post("/ent/v2/text2video", headers=headers, json=t2v())
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {API_KEY}"},
        {"Authorization": "Token mn_live_wrong"},
        {"x-api-key": "mn_live_wrong"},
        {"Authorization": API_KEY},
    ],
    ids=["bearer-scheme", "wrong-token", "wrong-x-api-key", "no-scheme"],
)
async def test_bad_credentials_get_401_invalid_api_key(headers: dict[str, str]) -> None:
    async with serve(create_minuit_sandbox()) as client:
        responses = [
            await client.post("/ent/v2/text2video", headers=headers, json=t2v()),
            await status(client, "mnt_task_x", headers),
        ]
    for response in responses:
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_api_key", "message": response.json()["message"]}


async def test_no_credentials_get_401_missing_api_key() -> None:
    async with serve(create_minuit_sandbox()) as client:
        response = await client.post("/ent/v2/text2video", json=t2v())
    assert response.status_code == 401
    assert response.json()["error"] == "missing_api_key"


# -- create ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload", "quota"),
    [
        ("/ent/v2/text2video", t2v(), (170, 34, 5, "720p", "high_quality", "t2v_high_quality")),
        ("/ent/v2/img2video", i2v(duration=15), (510, 34, 15, "720p", "high_quality", "i2v_high_quality")),
        (
            "/ent/v2/img2video",
            i2v(resolution="480p", duration=4),
            (64, 16, 4, "480p", "high_quality", "i2v_high_quality"),
        ),
        ("/ent/v2/reference2video", r2v(resolution="1080p"), (425, 85, 5, "1080p", "high_quality", "r2v_high_quality")),
        ("/ent/v2/img2video", wan(duration=2, resolution="1080p"), (170, 85, 2, "1080p", "wan2.7-i2v-spicy", None)),
    ],
    ids=["t2v-defaults", "i2v-15s", "i2v-480p", "r2v-1080p", "wan"],
)
async def test_create_returns_task_id_state_and_quota(
    path: str, payload: dict[str, Any], quota: tuple[Any, ...]
) -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW, quota_credits=1000)) as client:
        response = await client.post(path, headers=AUTH, json=payload)
    assert response.status_code == 200
    created = response.json()
    assert list(created) == ["task_id", "state", "quota"]
    assert re.fullmatch(r"mnt_task_[0-9a-f]{24}", created["task_id"])
    assert created["state"] == "queueing"
    assert list(created["quota"]) == QUOTA_KEYS
    cost, rate, duration, resolution, model, template = quota
    assert created["quota"] == {
        "cost": cost,
        "rate_per_second": rate,
        "duration": duration,
        "resolution": resolution,
        "model": model,
        "template": template,
        "unit": "second",
        "remaining": 1000 - cost,
        "total_credits": 1000,
        "used_credits": cost,
    }


async def test_doc_examples_are_accepted() -> None:
    examples = [
        ("/ent/v2/img2video", i2v(duration=5, resolution="720p", audio=False)),
        ("/ent/v2/text2video", t2v(resolution="720p", aspect_ratio="16:9", duration=5, audio=False)),
        ("/ent/v2/img2video", i2v(resolution="720p", aspect_ratio="16:9", duration=5, audio=False)),
        (
            "/ent/v2/img2video",
            wan(
                negative_prompt="low quality, artifacts", resolution="1080p", duration=5, audio=True, prompt_extend=True
            ),
        ),
        ("/ent/v2/reference2video", r2v(aspect_ratio="16:9", resolution="720p", duration=5, audio=False)),
    ]
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        for path, payload in examples:
            await create(client, path, payload)


async def test_optional_fields_of_each_path_are_accepted() -> None:
    refs = {"video_urls": ["https://x/v.mp4"] * 3, "audio_urls": ["https://x/a.mp3"] * 3}
    async with serve(create_minuit_sandbox(knobs=SLOW, callback_client=Receiver().client())) as client:
        await create(client, "/ent/v2/img2video", i2v(**refs, callback_url=CALLBACK_URL))
        await create(client, "/ent/v2/reference2video", r2v(**refs, images=[IMAGE] * 9))
        await create(client, "/ent/v2/img2video", wan(seed=42, audio_url="https://x/a.wav", audio=False))


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/ent/v2/text2video", {k: v for k, v in t2v().items() if k != "moderation"}),
        ("/ent/v2/text2video", t2v(moderation="enabled")),
        ("/ent/v2/text2video", {k: v for k, v in t2v().items() if k != "template"}),
        ("/ent/v2/text2video", t2v(template="i2v_high_quality")),
        ("/ent/v2/text2video", t2v(prompt="")),
        ("/ent/v2/text2video", {k: v for k, v in t2v().items() if k != "prompt"}),
        ("/ent/v2/text2video", t2v(duration=3)),
        ("/ent/v2/text2video", t2v(duration=16)),
        ("/ent/v2/text2video", t2v(duration=-1)),
        ("/ent/v2/text2video", t2v(duration=5.5)),
        ("/ent/v2/text2video", t2v(duration="5")),
        ("/ent/v2/text2video", t2v(resolution="720P")),
        ("/ent/v2/text2video", t2v(aspect_ratio="9:21")),
        ("/ent/v2/text2video", t2v(audio="yes")),
        ("/ent/v2/text2video", t2v(audio=None)),
        ("/ent/v2/text2video", t2v(generate_audio=True)),
        ("/ent/v2/text2video", t2v(images=[IMAGE])),
        ("/ent/v2/text2video", t2v(callback_url="ftp://hooks.example.com")),
        ("/ent/v2/img2video", {k: v for k, v in i2v().items() if k != "template"}),
        ("/ent/v2/img2video", i2v(model="wan2.7-i2v-spicy")),
        ("/ent/v2/img2video", i2v(images=[IMAGE, IMAGE])),
        ("/ent/v2/img2video", i2v(image=IMAGE)),
        ("/ent/v2/img2video", i2v(images=["/local/file.jpg"])),
        ("/ent/v2/img2video", i2v(video_urls=["https://x/v.mp4"] * 4)),
        ("/ent/v2/img2video", i2v(audio_urls=["https://x/a.mp3"] * 4)),
        ("/ent/v2/img2video", i2v(seed=1)),
        ("/ent/v2/img2video", i2v(negative_prompt="blur")),
        ("/ent/v2/img2video", wan(resolution="480p")),
        ("/ent/v2/img2video", wan(duration=1)),
        ("/ent/v2/img2video", wan(aspect_ratio="16:9")),
        ("/ent/v2/img2video", wan(video_urls=["https://x/v.mp4"])),
        ("/ent/v2/img2video", wan(model="wan2.6")),
        ("/ent/v2/reference2video", r2v(images=[IMAGE] * 10)),
        ("/ent/v2/reference2video", r2v(template="t2v_high_quality")),
        ("/ent/v2/reference2video", r2v(duration=2)),
    ],
)
async def test_invalid_create_gets_400_invalid_json(path: str, payload: dict[str, Any]) -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        response = await client.post(path, headers=AUTH, json=payload)
        creates = (await client.get("/_sandbox/creates")).json()
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error", "message"]
    assert response.json()["error"] == "invalid_json"
    assert response.json()["message"]
    assert creates["accepted"] == []


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/ent/v2/img2video", {k: v for k, v in i2v().items() if k != "images"}),
        ("/ent/v2/img2video", i2v(images=[])),
        ("/ent/v2/img2video", {k: v for k, v in wan().items() if k != "image"}),
        ("/ent/v2/reference2video", {k: v for k, v in r2v().items() if k != "images"}),
        ("/ent/v2/reference2video", r2v(images=[])),
    ],
)
async def test_create_without_an_image_gets_400_missing_image(path: str, payload: dict[str, Any]) -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        response = await client.post(path, headers=AUTH, json=payload)
    assert response.status_code == 400
    assert response.json()["error"] == "missing_image"


async def test_malformed_json_gets_400_invalid_json() -> None:
    async with serve(create_minuit_sandbox()) as client:
        for raw in (b"{template:", b"[]"):
            response = await client.post(
                "/ent/v2/text2video", headers={**AUTH, "Content-Type": "application/json"}, content=raw
            )
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_json"


async def test_exhausted_quota_gets_402_and_creates_nothing() -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW, quota_credits=200)) as client:
        first = await client.post("/ent/v2/text2video", headers=AUTH, json=t2v())
        second = await client.post("/ent/v2/text2video", headers=AUTH, json=t2v())
        creates = (await client.get("/_sandbox/creates")).json()
    assert first.status_code == 200
    assert second.status_code == 402
    assert second.json() == {"error": "quota_exhausted", "message": "Quota exhausted"}
    assert len(creates["accepted"]) == 1


async def test_quota_is_per_key() -> None:
    other = {"x-api-key": "mn_live_other"}
    app = create_minuit_sandbox(knobs=SLOW, quota_credits=200, extra_api_keys=["mn_live_other"])
    async with serve(app) as client:
        mine = await create(client, "/ent/v2/text2video", t2v())
        theirs = (await client.post("/ent/v2/text2video", headers=other, json=t2v())).json()
    assert mine["quota"]["used_credits"] == theirs["quota"]["used_credits"] == 170


# -- status ---------------------------------------------------------------------------------------------


async def test_state_moves_queueing_processing_success() -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3)
    async with serve(create_minuit_sandbox(knobs=knobs)) as client:
        task_id = (await create(client, "/ent/v2/img2video", i2v()))["task_id"]
        queueing = (await status(client, task_id)).json()
        await asyncio.sleep(0.15)
        processing = (await status(client, task_id)).json()
        await asyncio.sleep(0.2)
        success = (await status(client, task_id)).json()
    assert queueing == {"id": task_id, "task_id": task_id, "state": "queueing", "creations": []}
    assert processing == {**queueing, "state": "processing"}
    assert list(success) == ["id", "task_id", "state", "creations"]
    assert success["state"] == "success"
    assert [result_path(c["url"]) for c in success["creations"]] == [f"{task_id}/generated-result.mp4"]


async def test_failure_carries_err_code_and_err_msg() -> None:
    knobs = SandboxKnobs(processing_after_s=0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_minuit_sandbox(knobs=knobs)) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v()))["task_id"]
        await asyncio.sleep(0.1)
        failed = (await status(client, task_id)).json()
    assert failed == {
        "id": task_id,
        "task_id": task_id,
        "state": "failed",
        "creations": [],
        "err_code": "CreationPolicyViolation",
        "err_msg": "The generated video did not pass the content review.",
    }


async def test_unknown_task_and_other_keys_task_get_404_task_not_found() -> None:
    app = create_minuit_sandbox(knobs=SLOW, extra_api_keys=["mn_live_other"])
    async with serve(app) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v()))["task_id"]
        responses = [
            await status(client, "mnt_task_000000000000000000000000"),
            await status(client, task_id, {"x-api-key": "mn_live_other"}),
        ]
    for response in responses:
        assert response.status_code == 404
        assert response.json() == {"error": "task_not_found", "message": response.json()["message"]}


# -- chaos ----------------------------------------------------------------------------------------------


async def test_burst_429_then_recovers() -> None:
    async with serve(create_minuit_sandbox(knobs=SandboxKnobs(burst_429=2))) as client:
        responses = [await status(client, "mnt_task_x") for _ in range(3)]
    assert [response.status_code for response in responses] == [429, 429, 404]
    assert responses[0].headers["Retry-After"] == "1"
    assert list(responses[0].json()) == ["error", "message"]


async def test_burst_5xx_answers_502_upstream_error_and_creates_nothing() -> None:
    async with serve(
        create_minuit_sandbox(knobs=SandboxKnobs(burst_5xx=1, processing_after_s=30, complete_after_s=60))
    ) as client:
        first = await client.post("/ent/v2/text2video", headers=AUTH, json=t2v())
        second = await client.post("/ent/v2/text2video", headers=AUTH, json=t2v())
        creates = (await client.get("/_sandbox/creates")).json()
    assert first.status_code == 502
    assert first.json()["error"] == "upstream_error"
    assert second.status_code == 200
    assert creates["attempts"] == 2
    assert [entry["task_id"] for entry in creates["accepted"]] == [second.json()["task_id"]]
    # A refused create charges nothing.
    assert second.json()["quota"]["used_credits"] == 170


async def test_latency_delays_answers() -> None:
    async with serve(create_minuit_sandbox(knobs=SandboxKnobs(latency_s=0.2))) as client:
        started = time.monotonic()
        await status(client, "mnt_task_x")
        assert time.monotonic() - started >= 0.2


# -- sandbox control --------------------------------------------------------------------------------------


async def test_knobs_can_be_replaced_at_runtime() -> None:
    async with serve(create_minuit_sandbox()) as client:
        before = (await client.get("/_sandbox/knobs")).json()
        put = await client.put("/_sandbox/knobs", json={"burst_429": 1})
        limited = await status(client, "mnt_task_x")
        typo = await client.put("/_sandbox/knobs", json={"burst_492": 1})
    assert before["burst_429"] == 0
    assert put.json()["burst_429"] == 1
    assert limited.status_code == 429
    assert typo.status_code == 400


async def test_creates_and_tasks_logs_keep_accepted_bodies_in_order() -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        first = await create(client, "/ent/v2/text2video", t2v())
        await client.post("/ent/v2/text2video", headers=AUTH, json=t2v(duration=99))
        second = await create(client, "/ent/v2/img2video", wan())
        creates = (await client.get("/_sandbox/creates")).json()
        tasks = (await client.get("/_sandbox/tasks")).json()["tasks"]
    assert creates["attempts"] == 3
    assert creates["accepted"] == [
        {"task_id": first["task_id"], "path": "/ent/v2/text2video", "body": t2v()},
        {"task_id": second["task_id"], "path": "/ent/v2/img2video", "body": wan()},
    ]
    assert [(task["task_id"], task["state"]) for task in tasks] == [
        (first["task_id"], "queueing"),
        (second["task_id"], "queueing"),
    ]


async def test_force_complete_and_fail_then_409() -> None:
    async with serve(create_minuit_sandbox(knobs=SLOW)) as client:
        first = (await create(client, "/ent/v2/text2video", t2v()))["task_id"]
        second = (await create(client, "/ent/v2/text2video", t2v()))["task_id"]
        completed = await client.post(f"/_sandbox/tasks/{first}/complete")
        failed = await client.post(f"/_sandbox/tasks/{second}/fail")
        again = await client.post(f"/_sandbox/tasks/{first}/fail")
        missing = await client.post("/_sandbox/tasks/mnt_task_missing/complete")
        polled = (await status(client, second)).json()
    assert completed.json()["state"] == "success"
    assert failed.json()["state"] == "failed"
    assert polled["state"] == "failed"
    assert again.status_code == 409
    assert missing.status_code == 404


# -- callbacks ----------------------------------------------------------------------------------------------


async def test_callback_on_each_state_change_has_the_status_body_and_no_signature() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2)
    async with serve(create_minuit_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL)))["task_id"]
        await eventually(lambda: len(receiver.requests) == 2)
        polled = (await status(client, task_id)).content
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert states(receiver) == ["processing", "success"]
    assert all(str(request.url) == CALLBACK_URL for request in receiver.requests)
    assert json.loads(receiver.requests[0].content) == {
        "id": task_id,
        "task_id": task_id,
        "state": "processing",
        "creations": [],
    }
    assert receiver.requests[1].content == polled
    headers = receiver.requests[1].headers
    assert headers["content-type"] == "application/json"
    assert not [name for name in headers if "signature" in name.lower() or name.lower().startswith("x-hmac")]
    assert [(entry["state"], entry["kind"], entry["status_code"]) for entry in log] == [
        ("processing", "delivery", 200),
        ("success", "delivery", 200),
    ]
    assert log[1]["body"].encode() == polled


async def test_no_callback_url_sends_nothing() -> None:
    receiver = Receiver()
    async with serve(create_minuit_sandbox(knobs=QUICK, callback_client=receiver.client())) as client:
        await create(client, "/ent/v2/text2video", t2v())
        await asyncio.sleep(0.25)
    assert receiver.requests == []


async def test_forced_failure_sends_the_failed_body() -> None:
    receiver = Receiver()
    async with serve(create_minuit_sandbox(knobs=SLOW, callback_client=receiver.client())) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL)))["task_id"]
        await client.post(f"/_sandbox/tasks/{task_id}/fail")
        await eventually(lambda: len(receiver.requests) == 1)
    body = json.loads(receiver.requests[0].content)
    assert body["state"] == "failed"
    assert body["err_msg"] == "The generated video did not pass the content review."


async def test_failed_delivery_is_retried() -> None:
    receiver = Receiver(statuses=(500, 401, 200))
    async with serve(create_minuit_sandbox(knobs=SLOW, callback_client=receiver.client())) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL)))["task_id"]
        await client.post(f"/_sandbox/tasks/{task_id}/complete")
        await eventually(lambda: len(receiver.requests) == 3)
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert [(entry["attempt"], entry["status_code"]) for entry in log] == [(1, 500), (2, 401), (3, 200)]
    assert len({request.content for request in receiver.requests}) == 1


async def test_delivery_gives_up_after_four_attempts() -> None:
    receiver = Receiver(statuses=(503,) * 10)
    async with serve(create_minuit_sandbox(knobs=SLOW, callback_client=receiver.client())) as client:
        task_id = (await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL)))["task_id"]
        await client.post(f"/_sandbox/tasks/{task_id}/complete")
        await eventually(lambda: len(receiver.requests) == 4)
        await asyncio.sleep(1.0)
    assert len(receiver.requests) == 4


async def test_dropped_callbacks_are_logged_and_never_sent() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.02, complete_after_s=0.05, drop_callback_rate=1.0)
    async with serve(create_minuit_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL))

        async def logged() -> bool:
            return len((await client.get("/_sandbox/callbacks")).json()["callbacks"]) == 2

        await eventually(logged)
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert receiver.requests == []
    assert [(entry["state"], entry["kind"], entry["attempt"]) for entry in log] == [
        ("processing", "dropped", 0),
        ("success", "dropped", 0),
    ]


async def test_duplicated_callbacks_are_sent_twice_with_the_same_body() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.02, complete_after_s=0.08, duplicate_callback_rate=1.0)
    async with serve(create_minuit_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL))
        await eventually(lambda: len(receiver.requests) == 4)
    assert states(receiver) == ["processing", "processing", "success", "success"]
    assert receiver.requests[2].content == receiver.requests[3].content


async def test_out_of_order_delivers_processing_after_success() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.02, complete_after_s=0.15, out_of_order_rate=1.0)
    async with serve(create_minuit_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL))
        await eventually(lambda: len(receiver.requests) == 2)
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert states(receiver) == ["success", "processing"]
    assert [(entry["state"], entry["kind"]) for entry in log] == [("success", "delivery"), ("processing", "late")]


async def test_shutdown_cancels_pending_callbacks_and_leaves_injected_client_open() -> None:
    receiver = Receiver()
    callback_client = receiver.client()
    app = create_minuit_sandbox(knobs=SLOW, callback_client=callback_client)
    before = asyncio.all_tasks()
    async with serve(app) as client:
        await create(client, "/ent/v2/text2video", t2v(callback_url=CALLBACK_URL))
        assert len(asyncio.all_tasks() - before) >= 1
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert not callback_client.is_closed
    assert receiver.requests == []
    await callback_client.aclose()
