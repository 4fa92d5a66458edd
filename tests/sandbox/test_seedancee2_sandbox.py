"""Contract tests of the Seedancee2 emulator against seed 002: what an adapter would observe."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import stripe
import uvicorn

from sandbox.knobs import Chaos, SandboxKnobs
from sandbox.seedancee2 import create_seedancee2_sandbox
from tests.sandbox.conftest import Receiver, eventually, serve

API_KEY = "sk_seedancee2_live_sandbox"
SECRET = "whsec_seedancee2_sandbox"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.15)
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
CALLBACK_URL = "https://hooks.example.com/seedancee2"

COMPLETED_KEYS = ["id", "status", "model", "created_at", "completed_at", "credits_charged", "output", "metadata"]
FAILED_KEYS = ["id", "status", "model", "created_at", "credits_charged", "credits_refunded", "error", "metadata"]
DOC_FAILED_ERROR = {
    "code": "generation_failed",
    "message": "The video could not be generated. Please try again with a different prompt.",
    "type": "generation_error",
}


def body(model: str = "mini", **input_fields: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "Waves on black volcanic rocks", **input_fields}}


async def create(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/videos/generations", headers=AUTH, json=payload)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


# -- auth -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [AUTH, {"x-api-key": API_KEY}, {"Authorization": f"bearer {API_KEY}"}])
async def test_documented_auth_headers_are_accepted(headers: dict[str, str]) -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        response = await client.get("/v1/models", headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk_seedancee2_live_wrong"},
        {"x-api-key": "sk_seedancee2_live_wrong"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": API_KEY},
    ],
    ids=["missing", "wrong-bearer", "wrong-x-api-key", "token-scheme", "no-scheme"],
)
async def test_bad_credentials_get_401_invalid_api_key(headers: dict[str, str]) -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        responses = [
            await client.get("/v1/models", headers=headers),
            await client.post("/v1/videos/generations", headers=headers, json=body()),
            await client.get("/v1/videos/generations/vid_x", headers=headers),
        ]
    for response in responses:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.json()["error"]["type"] == "authentication_error"


# -- create ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "credits"),
    [
        (body("mini", duration=5, resolution="720p"), 50),
        (body("pro", duration=4, resolution="480p"), 40),
        (body("fast", duration=10, resolution="720p"), 160),
        (body("pro", duration=5, resolution="720p", image_urls=["https://x/1.png", "https://x/2.png"]), 100),
        (body("pro", duration=5, resolution="1080p"), 250),
        (body("mini"), 50),  # defaults: 5 s, and 720p as the emulator's documented assumption
    ],
)
async def test_create_returns_documented_envelope_and_credits(payload: dict[str, Any], credits: int) -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        response = await client.post("/v1/videos/generations", headers=AUTH, json=payload)
    assert response.status_code == 200
    data = response.json()["data"]
    assert list(response.json()) == ["data"]
    assert list(data) == ["id", "status", "model", "credits_reserved", "created_at"]
    assert re.fullmatch(r"vid_[0-9a-z]{26}", data["id"])
    assert data["status"] == "pending"
    assert data["model"] == payload["model"]
    assert data["credits_reserved"] == credits
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["created_at"])


@pytest.mark.parametrize(
    "payload",
    [
        body("mini", resolution="1080p"),
        body("fast", resolution="1080p"),
        body(size="16:9"),
        {**body(), "webhook_url": CALLBACK_URL},
        body(video_url="https://x/v.mp4", video_urls=["https://x/w.mp4"]),
        body(duration=3),
        body(duration=16),
        body(duration="5"),
        body(duration=5.5),
        body(resolution="720P"),
        body(aspect_ratio="2:1"),
        body(generation_type="text_to_video"),
        body(generation_type="first_and_last_frames", start_image_url="https://x/a.png"),
        body(start_image_url="https://x/a.png", end_image_url="https://x/b.png"),
        body(image_urls=[f"https://x/{i}.png" for i in range(10)]),
        body(video_urls=[f"https://x/{i}.mp4" for i in range(4)]),
        body(audio_urls=[f"https://x/{i}.mp3" for i in range(4)]),
        body(seed=None),
        body(generate_audio="yes"),
        {"model": "mini", "input": {"duration": 5}},
        {"model": "mini", "input": {"prompt": ""}},
        {"input": {"prompt": "x"}},
        {"model": "mini"},
        {**body(), "callback_url": "ftp://hooks.example.com"},
        {**body(), "metadata": ["job_123"]},
    ],
)
async def test_invalid_create_gets_400_invalid_request(payload: dict[str, Any]) -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        response = await client.post("/v1/videos/generations", headers=AUTH, json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"]


async def test_malformed_json_gets_400() -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        response = await client.post(
            "/v1/videos/generations", headers={**AUTH, "Content-Type": "application/json"}, content=b"{model:"
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_unknown_model_gets_404_model_not_found() -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        response = await client.post("/v1/videos/generations", headers=AUTH, json=body("seedance-2.0-pro"))
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "model_not_found",
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
        }
    }


async def test_full_doc_example_is_accepted() -> None:
    payload = {
        "model": "pro",
        "callback_url": CALLBACK_URL,
        "input": {
            "prompt": "A cinematic tracking shot through a rain-soaked neon market at night",
            "image_urls": ["https://example-cdn.com/reference-1.png", "https://example-cdn.com/reference-2.png"],
            "duration": 5,
            "resolution": "720p",
            "aspect_ratio": "16:9",
            "generate_audio": True,
            "return_last_frame": True,
        },
        "metadata": {"customer_job_id": "job_123", "campaign": "launch_week"},
    }
    async with serve(create_seedancee2_sandbox(knobs=SLOW, callback_client=Receiver().client())) as client:
        data = await create(client, payload)
    assert data["credits_reserved"] == 100


# -- status ---------------------------------------------------------------------------------------------


async def test_status_moves_pending_processing_completed() -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3)
    metadata = {"customer_job_id": "job_123", "campaign": "launch_week"}
    async with serve(create_seedancee2_sandbox(knobs=knobs)) as client:
        created = await create(client, {**body("pro", return_last_frame=True), "metadata": metadata})
        url = f"/v1/videos/generations/{created['id']}"
        pending = (await client.get(url, headers=AUTH)).json()["data"]
        await asyncio.sleep(0.15)
        processing = (await client.get(url, headers=AUTH)).json()["data"]
        await asyncio.sleep(0.2)
        completed = (await client.get(url, headers=AUTH)).json()["data"]

    assert pending == {**processing, "status": "pending"}
    assert processing == {
        "id": created["id"],
        "status": "processing",
        "model": "pro",
        "created_at": created["created_at"],
        "metadata": metadata,
    }
    assert list(completed) == COMPLETED_KEYS
    assert completed["status"] == "completed"
    assert completed["credits_charged"] == created["credits_reserved"]
    assert completed["completed_at"] > completed["created_at"]
    assert completed["metadata"] == metadata
    assert list(completed["output"]) == ["video_url", "thumbnail_url", "last_frame_url"]
    assert completed["output"]["video_url"].endswith(f"/{created['id']}.mp4")


async def test_last_frame_url_only_when_requested() -> None:
    async with serve(create_seedancee2_sandbox(knobs=QUICK)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.2)
        data = (await client.get(f"/v1/videos/generations/{created['id']}", headers=AUTH)).json()["data"]
    assert list(data["output"]) == ["video_url", "thumbnail_url"]
    assert "metadata" not in data


async def test_failure_rate_one_gives_the_doc_failed_shape() -> None:
    knobs = SandboxKnobs(processing_after_s=0.0, complete_after_s=0.05, failure_rate=1.0)
    metadata = {"customer_job_id": "job_123", "campaign": "launch_week"}
    async with serve(create_seedancee2_sandbox(knobs=knobs)) as client:
        created = await create(client, {**body("pro"), "metadata": metadata})
        await asyncio.sleep(0.1)
        data = (await client.get(f"/v1/videos/generations/{created['id']}", headers=AUTH)).json()["data"]
    assert list(data) == FAILED_KEYS
    assert data == {
        "id": created["id"],
        "status": "failed",
        "model": "pro",
        "created_at": created["created_at"],
        "credits_charged": 0,
        "credits_refunded": 100,
        "error": DOC_FAILED_ERROR,
        "metadata": metadata,
    }


async def test_unknown_task_and_other_accounts_task_get_404_task_not_found() -> None:
    app = create_seedancee2_sandbox(knobs=SLOW, extra_api_keys=["sk_seedancee2_live_other"])
    async with serve(app) as client:
        created = await create(client, body())
        other = {"x-api-key": "sk_seedancee2_live_other"}
        responses = [
            await client.get("/v1/videos/generations/vid_01jz8b7q4x8k2p9w3m5c6n7r8s", headers=AUTH),
            await client.get(f"/v1/videos/generations/{created['id']}", headers=other),
        ]
        other_list = (await client.get("/v1/videos/generations", headers=other)).json()
    for response in responses:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert other_list == {"data": []}


# -- list, models, usage --------------------------------------------------------------------------------


async def test_list_is_newest_first_with_status_filter_and_limit() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        ids = [(await create(client, body()))["id"] for _ in range(3)]
        await client.post(f"/_sandbox/tasks/{ids[1]}/complete")
        everything = (await client.get("/v1/videos/generations", headers=AUTH)).json()["data"]
        limited = (await client.get("/v1/videos/generations?limit=2", headers=AUTH)).json()["data"]
        completed = (await client.get("/v1/videos/generations?status=completed", headers=AUTH)).json()["data"]
        pending = (await client.get("/v1/videos/generations?status=pending", headers=AUTH)).json()["data"]
        errors = [
            await client.get("/v1/videos/generations?limit=101", headers=AUTH),
            await client.get("/v1/videos/generations?limit=0", headers=AUTH),
            await client.get("/v1/videos/generations?status=succeeded", headers=AUTH),
        ]
    assert [task["id"] for task in everything] == ids[::-1]
    assert [task["id"] for task in limited] == [ids[2], ids[1]]
    assert [task["id"] for task in completed] == [ids[1]]
    assert [task["id"] for task in pending] == [ids[2], ids[0]]
    assert [response.status_code for response in errors] == [400, 400, 400]


async def test_list_limit_defaults_to_20() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        for _ in range(21):
            await create(client, body())
        data = (await client.get("/v1/videos/generations", headers=AUTH)).json()["data"]
    assert len(data) == 20


async def test_models_lists_public_models() -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        response = await client.get("/v1/models", headers=AUTH)
    assert response.json() == {
        "data": [
            {
                "id": "pro",
                "status": "active",
                "resolutions": ["480p", "720p", "1080p"],
                "duration": {"min": 4, "max": 15},
            },
            {"id": "fast", "status": "active", "resolutions": ["480p", "720p"], "duration": {"min": 4, "max": 15}},
            {"id": "mini", "status": "active", "resolutions": ["480p", "720p"], "duration": {"min": 4, "max": 15}},
        ]
    }


async def test_usage_summarises_tasks() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        done = await create(client, body("mini"))  # 50
        failed = await create(client, body("pro", duration=4, resolution="480p"))  # 40
        await create(client, body("pro"))  # 100, still pending
        await client.post(f"/_sandbox/tasks/{done['id']}/complete")
        await client.post(f"/_sandbox/tasks/{failed['id']}/fail")
        response = await client.get(
            "/v1/usage?start=2000-01-01T00:00:00.000Z&end=2999-12-31T23:59:59.999Z&limit=7", headers=AUTH
        )
        out_of_range = await client.get("/v1/usage?end=2000-01-01T00:00:00Z", headers=AUTH)
        bad = [
            await client.get("/v1/usage?start=yesterday", headers=AUTH),
            await client.get("/v1/usage?limit=366", headers=AUTH),
        ]
    data = response.json()["data"]
    assert list(data) == ["range", "summary", "by_model", "timeline"]
    assert data["range"] == {"start": "2000-01-01T00:00:00.000Z", "end": "2999-12-31T23:59:59.999Z"}
    assert data["summary"] == {
        "total_jobs": 3,
        "pending_jobs": 1,
        "processing_jobs": 0,
        "completed_jobs": 1,
        "failed_jobs": 1,
        "credits_charged": 50,
        "credits_refunded": 40,
        "net_credits": 10,
    }
    assert [row["model"] for row in data["by_model"]] == ["mini", "pro"]
    assert data["by_model"][1]["total_jobs"] == 2
    assert len(data["timeline"]) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", data["timeline"][0]["date"])
    assert out_of_range.json()["data"]["summary"]["total_jobs"] == 0
    assert [response.status_code for response in bad] == [400, 400]


# -- chaos ----------------------------------------------------------------------------------------------


async def test_burst_429_then_recovers() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SandboxKnobs(burst_429=2))) as client:
        responses = [await client.get("/v1/models", headers=AUTH) for _ in range(3)]
    assert [response.status_code for response in responses] == [429, 429, 200]
    assert responses[0].headers["Retry-After"] == "1"
    assert set(responses[0].json()["error"]) == {"code", "message", "type"}


async def test_burst_5xx_answers_internal_error() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SandboxKnobs(burst_5xx=1))) as client:
        first = await client.post("/v1/videos/generations", headers=AUTH, json=body())
        second = await client.post("/v1/videos/generations", headers=AUTH, json=body())
        creates = (await client.get("/_sandbox/creates")).json()
    assert first.status_code == 500
    assert first.json()["error"] == {
        "code": "internal_error",
        "message": "Unexpected server error.",
        "type": "api_error",
    }
    assert second.status_code == 200
    assert creates["attempts"] == 2
    assert [entry["id"] for entry in creates["accepted"]] == [second.json()["data"]["id"]]


async def test_latency_delays_answers() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SandboxKnobs(latency_s=0.2))) as client:
        started = time.monotonic()
        await client.get("/v1/models", headers=AUTH)
        assert time.monotonic() - started >= 0.2


def test_chaos_is_deterministic_for_a_seed() -> None:
    knobs = SandboxKnobs(failure_rate=0.5, seed=7, burst_429=1)
    first, second = Chaos(knobs), Chaos(knobs)
    assert [first.should_fail() for _ in range(50)] == [second.should_fail() for _ in range(50)]
    assert (first.take_429(), first.take_429(), first.take_5xx()) == (True, False, False)


def test_knobs_reject_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SandboxKnobs(failure_rate=1.5)
    with pytest.raises(ValueError, match="complete_after_s"):
        SandboxKnobs(complete_after_s=-1)


# -- sandbox control --------------------------------------------------------------------------------------


async def test_knobs_can_be_replaced_at_runtime() -> None:
    async with serve(create_seedancee2_sandbox()) as client:
        before = (await client.get("/_sandbox/knobs")).json()
        put = await client.put("/_sandbox/knobs", json={"burst_429": 1, "failure_rate": 1.0})
        limited = await client.get("/v1/models", headers=AUTH)
        typo = await client.put("/_sandbox/knobs", json={"burst_492": 1})
        out_of_range = await client.put("/_sandbox/knobs", json={"failure_rate": 2})
        after = (await client.get("/_sandbox/knobs")).json()
    assert before["burst_429"] == 0
    assert put.json()["burst_429"] == 1
    assert put.json()["complete_after_s"] == 1.5
    assert limited.status_code == 429
    assert [typo.status_code, out_of_range.status_code] == [400, 400]
    assert after["failure_rate"] == 1.0


async def test_creates_log_keeps_accepted_bodies_in_order() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        await create(client, body("mini"))
        await client.post("/v1/videos/generations", headers=AUTH, json=body("mini", resolution="1080p"))
        await create(client, {**body("fast"), "metadata": {"customer_job_id": "job_9"}})
        creates = (await client.get("/_sandbox/creates")).json()
        tasks = (await client.get("/_sandbox/tasks")).json()["tasks"]
    assert creates["attempts"] == 3
    assert [entry["body"] for entry in creates["accepted"]] == [
        body("mini"),
        {**body("fast"), "metadata": {"customer_job_id": "job_9"}},
    ]
    assert [task["id"] for task in tasks] == [entry["id"] for entry in creates["accepted"]]


async def test_force_complete_and_fail_then_409() -> None:
    async with serve(create_seedancee2_sandbox(knobs=SLOW)) as client:
        first = await create(client, body())
        second = await create(client, body())
        completed = await client.post(f"/_sandbox/tasks/{first['id']}/complete")
        failed = await client.post(f"/_sandbox/tasks/{second['id']}/fail")
        again = await client.post(f"/_sandbox/tasks/{first['id']}/fail")
        missing = await client.post("/_sandbox/tasks/vid_missing/complete")
        polled = (await client.get(f"/v1/videos/generations/{second['id']}", headers=AUTH)).json()["data"]
    assert completed.json()["data"]["status"] == "completed"
    assert failed.json()["data"]["status"] == "failed"
    assert polled["status"] == "failed"
    assert again.status_code == 409
    assert missing.status_code == 404


# -- callbacks ----------------------------------------------------------------------------------------------


def verify_by_hand(raw: bytes, header: str, secret: str) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + raw, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) < 300 and hmac.compare_digest(expected, parts["v1"])


async def test_signed_callback_reaches_a_real_receiver() -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def receiver(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        received.append((headers, raw))
        arrived.set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            return server.started

        await eventually(started)
        port = server.servers[0].sockets[0].getsockname()[1]
        app = create_seedancee2_sandbox(knobs=QUICK)  # no injected client: the app makes its own on startup
        async with serve(app) as client:
            created = await create(
                client,
                {
                    **body("pro", return_last_frame=True),
                    "callback_url": f"http://127.0.0.1:{port}/hook",
                    "metadata": {"k": "v"},
                },
            )
            await asyncio.wait_for(arrived.wait(), timeout=3)
            polled = (await client.get(f"/v1/videos/generations/{created['id']}", headers=AUTH)).json()

            async def logged() -> bool:
                return bool((await client.get("/_sandbox/callbacks")).json()["callbacks"])

            await eventually(logged)
            log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    finally:
        server.should_exit = True
        await serving

    headers, raw = received[0]
    assert headers["content-type"] == "application/json"
    assert headers["x-seedancee2-event"] == "video.generation.completed"
    signature = headers["x-seedancee2-signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", signature)
    assert verify_by_hand(raw, signature, SECRET)
    assert not verify_by_hand(raw + b" ", signature, SECRET)
    stripe.WebhookSignature.verify_header(raw, signature, SECRET, tolerance=300)
    payload = json.loads(raw)
    # The webhook is the GET body minus output.last_frame_url, as in the doc's completed webhook example.
    del polled["data"]["output"]["last_frame_url"]
    assert payload == polled
    assert list(payload["data"]) == COMPLETED_KEYS
    assert log[0]["event"] == "video.generation.completed"
    assert (log[0]["kind"], log[0]["attempt"], log[0]["status_code"]) == ("delivery", 1, 204)


async def test_failed_callback_event_and_body() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_seedancee2_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        created = await create(client, {**body("pro"), "callback_url": CALLBACK_URL})

        async def delivered() -> bool:
            return len(receiver.requests) == 1

        await eventually(delivered)
    request = receiver.requests[0]
    assert str(request.url) == CALLBACK_URL
    assert request.headers["X-Seedancee2-Event"] == "video.generation.failed"
    assert verify_by_hand(request.content, request.headers["X-Seedancee2-Signature"], SECRET)
    data = json.loads(request.content)["data"]
    assert list(data) == FAILED_KEYS[:-1]
    assert data["id"] == created["id"]
    assert data["error"] == DOC_FAILED_ERROR


async def test_callback_is_unsigned_when_signing_is_off() -> None:
    receiver = Receiver()
    app = create_seedancee2_sandbox(webhook_secret=None, knobs=SLOW, callback_client=receiver.client())
    async with serve(app) as client:
        created = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await client.post(f"/_sandbox/tasks/{created['id']}/complete")

        async def delivered() -> bool:
            return len(receiver.requests) == 1

        await eventually(delivered)
    assert "X-Seedancee2-Signature" not in receiver.requests[0].headers
    assert receiver.requests[0].headers["X-Seedancee2-Event"] == "video.generation.completed"


async def test_failed_delivery_is_retried() -> None:
    receiver = Receiver(statuses=(500, 503, 200))
    async with serve(create_seedancee2_sandbox(knobs=SLOW, callback_client=receiver.client())) as client:
        created = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await client.post(f"/_sandbox/tasks/{created['id']}/complete")

        async def three_attempts() -> bool:
            return len(receiver.requests) == 3

        await eventually(three_attempts)
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert [(entry["attempt"], entry["status_code"]) for entry in log] == [(1, 500), (2, 503), (3, 200)]
    assert len({request.content for request in receiver.requests}) == 1


async def test_drop_duplicate_and_stale_replay_knobs() -> None:
    receiver = Receiver()
    app = create_seedancee2_sandbox(knobs=SLOW, callback_client=receiver.client())

    def arrived(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(receiver.requests) == count

        return check

    async with serve(app) as client:
        await client.put("/_sandbox/knobs", json={"drop_callback_rate": 1.0, "complete_after_s": 60})
        dropped = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await client.post(f"/_sandbox/tasks/{dropped['id']}/complete")

        await client.put("/_sandbox/knobs", json={"duplicate_callback_rate": 1.0, "complete_after_s": 60})
        duplicated = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await client.post(f"/_sandbox/tasks/{duplicated['id']}/complete")
        await eventually(arrived(2))

        # The stale task lives 0.3 s, so its replay comes 0.3 s after its (forced) delivery...
        await client.put("/_sandbox/knobs", json={"out_of_order_rate": 1.0, "complete_after_s": 0.3})
        stale = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await client.post(f"/_sandbox/tasks/{stale['id']}/complete")
        await eventually(arrived(3))
        # ...after the callback of a task created later that completes on its own in 0.05 s.
        await client.put("/_sandbox/knobs", json={"complete_after_s": 0.05})
        later = await create(client, {**body(), "callback_url": CALLBACK_URL})
        await eventually(arrived(5))
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]

    order = [json.loads(request.content)["data"]["id"] for request in receiver.requests]
    assert order == [duplicated["id"], duplicated["id"], stale["id"], later["id"], stale["id"]]
    assert receiver.requests[0].content == receiver.requests[1].content
    # The stale replay is the original request again, signature timestamp included.
    assert receiver.requests[4].content == receiver.requests[2].content
    assert (
        receiver.requests[4].headers["X-Seedancee2-Signature"] == receiver.requests[2].headers["X-Seedancee2-Signature"]
    )
    assert [entry["kind"] for entry in log if entry["task_id"] == dropped["id"]] == ["dropped"]
    assert [entry["kind"] for entry in log if entry["task_id"] == duplicated["id"]] == ["delivery", "duplicate"]
    assert [entry["kind"] for entry in log if entry["task_id"] == stale["id"]] == ["delivery", "stale_replay"]


async def test_shutdown_cancels_pending_callbacks_and_leaves_injected_client_open() -> None:
    receiver = Receiver()
    callback_client = receiver.client()
    app = create_seedancee2_sandbox(knobs=SLOW, callback_client=callback_client)
    before = asyncio.all_tasks()
    async with serve(app) as client:
        await create(client, {**body(), "callback_url": CALLBACK_URL})
        assert len(asyncio.all_tasks() - before) >= 1
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert not callback_client.is_closed
    assert receiver.requests == []
    await callback_client.aclose()
