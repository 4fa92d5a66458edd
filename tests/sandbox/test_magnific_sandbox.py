"""Contract tests of the Magnific emulator against seed 004 and providers.md §5: what an adapter would observe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sandbox.knobs import SandboxKnobs
from sandbox.magnific import create_magnific_sandbox
from sandbox.media import result_path
from tests.sandbox.conftest import Receiver, eventually, serve

API_KEY = "magnific_sandbox_key"
SECRET = "whsec_bWFnbmlmaWMtc2FuZGJveC1zZWNyZXQ="
AUTH = {"x-magnific-api-key": API_KEY}
CREATE_720P = "/v1/ai/video/seedance-2-mini-720p"
CREATE_480P = "/v1/ai/video/seedance-2-mini-480p"
TASKS = "/v1/ai/video/seedance-2-mini"
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.15)
SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)
CALLBACK_URL = "https://hooks.example.com/magnific"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# The seed's own curl example, byte for byte in meaning.
DOC_EXAMPLE = {
    "prompt": "A cinematic shot of a cat walking through a neon-lit alley at night",
    "webhook_url": CALLBACK_URL,
    "image": "aSDinaTvuI8gbWludGxpZnk=",
    "image_end": "aSDinaTvuI8gbWludGxpZnk=",
    "duration": 5,
    "aspect_ratio": "widescreen_16_9",
    "camera_fixed": False,
    "seed": -1,
    "enable_safety_checker": True,
}


def body(**fields: Any) -> dict[str, Any]:
    return {"prompt": "Waves on black volcanic rocks", **fields}


async def create(client: httpx.AsyncClient, payload: dict[str, Any], path: str = CREATE_720P) -> dict[str, Any]:
    response = await client.post(path, headers=AUTH, json=payload)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def verify_by_hand(request: httpx.Request, key: bytes) -> bool:
    """Standard Webhooks, written out: base64(HMAC-SHA256(key, "{id}.{timestamp}.{raw_body}")) in a v1 entry."""
    webhook_id, timestamp = request.headers["webhook-id"], request.headers["webhook-timestamp"]
    content = f"{webhook_id}.{timestamp}.".encode() + request.content
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    entries = request.headers["webhook-signature"].split(" ")
    return abs(time.time() - int(timestamp)) < 300 and any(e == f"v1,{expected}" for e in entries)


# -- auth -----------------------------------------------------------------------------------------------


async def test_x_magnific_api_key_is_accepted() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        response = await client.get(TASKS, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"data": []}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key"),
        ({"Authorization": f"Bearer {API_KEY}"}, "Missing API key"),
        ({"x-freepik-api-key": API_KEY}, "Missing API key"),
        ({"x-magnific-api-key": "wrong"}, "Invalid API key"),
    ],
    ids=["missing", "bearer", "legacy-freepik-header", "wrong-key"],
)
async def test_other_credentials_get_401_with_message(headers: dict[str, str], message: str) -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        responses = [
            await client.post(CREATE_720P, headers=headers, json=body()),
            await client.get(f"{TASKS}/046b6c7f-0b8a-43b9-b35d-6489e6daee91", headers=headers),
            await client.get(TASKS, headers=headers),
        ]
    for response in responses:
        assert response.status_code == 401
        assert response.json() == {"message": message}


# -- create ---------------------------------------------------------------------------------------------


async def test_create_returns_the_documented_envelope() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        response = await client.post(CREATE_720P, headers=AUTH, json=body())
    assert response.status_code == 200
    assert list(response.json()) == ["data"]
    data = response.json()["data"]
    assert list(data) == ["generated", "task_id", "status"]
    assert data["generated"] == []
    assert data["status"] == "CREATED"
    assert UUID.fullmatch(data["task_id"])


async def test_resolution_is_taken_from_the_create_path() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        low = await create(client, body(), CREATE_480P)
        high = await create(client, body(), CREATE_720P)
        await client.post(f"/_sandbox/tasks/{low['task_id']}/complete")
        generated = (await client.get(f"{TASKS}/{low['task_id']}", headers=AUTH)).json()["data"]["generated"]
        creates = (await client.get("/_sandbox/creates")).json()["accepted"]
    assert [(c["task_id"], c["resolution"]) for c in creates] == [(low["task_id"], "480p"), (high["task_id"], "720p")]
    assert [result_path(url) for url in generated] == [f"480p/{low['task_id']}.mp4"]


async def test_full_doc_example_is_accepted() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW, callback_client=Receiver().client())) as client:
        data = await create(client, DOC_EXAMPLE)
        creates = (await client.get("/_sandbox/creates")).json()["accepted"]
    assert data["status"] == "CREATED"
    assert creates[0]["body"] == DOC_EXAMPLE


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (body(duration=7), "duration"),
        (body(duration="5"), "duration"),
        (body(duration=15), "duration"),
        (body(aspect_ratio="16:9"), "aspect_ratio"),
        (body(aspect_ratio="adaptive"), "aspect_ratio"),
        (body(aspect_ratio="WIDESCREEN_16_9"), "aspect_ratio"),
        (body(seed=-2), "seed"),
        (body(seed=4294967296), "seed"),
        (body(seed=None), "seed"),
        (body(camera_fixed="no"), "camera_fixed"),
        (body(prompt="x" * 2001), "prompt"),
        (body(prompt=""), "prompt"),
        ({"duration": 5}, "prompt"),
        (body(resolution="720p"), "resolution"),
        (body(generate_audio=False), "generate_audio"),
        (body(reference_images=["https://x/1.png"]), "reference_images"),
        (body(reference_videos=["https://x/1.mp4"]), "reference_videos"),
        (body(image_end="https://x/b.png"), "image_end"),
        (body(image="data:image/png;base64,aSDinaTvuI8="), "image"),
        (body(image="https://x/a.png", image_end="not base64!"), "image_end"),
        (body(webhook_url="ftp://hooks.example.com"), "webhook_url"),
    ],
)
async def test_invalid_create_gets_400_problem_naming_the_parameter(payload: dict[str, Any], param: str) -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        response = await client.post(CREATE_720P, headers=AUTH, json=payload)
        creates = (await client.get("/_sandbox/creates")).json()
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["message"] == "Your request has invalid parameters"
    assert [p["name"] for p in problem["invalid_params"]] == [param]
    assert problem["invalid_params"][0]["reason"]
    assert creates["accepted"] == []


async def test_malformed_json_gets_400() -> None:
    async with serve(create_magnific_sandbox()) as client:
        response = await client.post(
            CREATE_720P, headers={**AUTH, "Content-Type": "application/json"}, content=b"{prompt:"
        )
    assert response.status_code == 400
    assert response.json()["invalid_params"][0]["name"] == "body"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/ai/video/seedance-2-mini-1080p", 404),
        ("POST", TASKS, 405),
        ("POST", "/v1/ai/video/seedance-2-mini-720P", 404),
    ],
)
async def test_only_the_480p_and_720p_create_paths_exist(method: str, path: str, status: int) -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        response = await client.request(method, path, headers=AUTH, json=body())
    assert response.status_code == status
    assert list(response.json()) == ["message"]


# -- status ---------------------------------------------------------------------------------------------


async def test_status_moves_created_in_progress_completed() -> None:
    knobs = SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3)
    async with serve(create_magnific_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        url = f"{TASKS}/{created['task_id']}"
        first = (await client.get(url, headers=AUTH)).json()
        await asyncio.sleep(0.15)
        middle = (await client.get(url, headers=AUTH)).json()
        await asyncio.sleep(0.2)
        last = (await client.get(url, headers=AUTH)).json()
    task_id = created["task_id"]
    assert first == {"data": {"task_id": task_id, "status": "CREATED", "generated": []}}
    assert middle == {"data": {"task_id": task_id, "status": "IN_PROGRESS", "generated": []}}
    assert list(last["data"]) == ["task_id", "status", "generated"]
    assert last["data"]["status"] == "COMPLETED"
    assert [result_path(url) for url in last["data"]["generated"]] == [f"720p/{task_id}.mp4"]


async def test_status_path_with_a_resolution_suffix_does_not_exist() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        created = await create(client, body())
        response = await client.get(f"{CREATE_720P}/{created['task_id']}", headers=AUTH)
    assert response.status_code == 404


async def test_failed_task_carries_no_reason() -> None:
    knobs = SandboxKnobs(processing_after_s=0.0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_magnific_sandbox(knobs=knobs)) as client:
        created = await create(client, body())
        await asyncio.sleep(0.1)
        data = (await client.get(f"{TASKS}/{created['task_id']}", headers=AUTH)).json()["data"]
    assert data == {"task_id": created["task_id"], "status": "FAILED", "generated": []}


async def test_unknown_task_and_another_accounts_task_get_404() -> None:
    app = create_magnific_sandbox(knobs=SLOW, extra_api_keys=["other_key"])
    async with serve(app) as client:
        created = await create(client, body())
        other = {"x-magnific-api-key": "other_key"}
        responses = [
            await client.get(f"{TASKS}/046b6c7f-0b8a-43b9-b35d-6489e6daee91", headers=AUTH),
            await client.get(f"{TASKS}/{created['task_id']}", headers=other),
        ]
        other_list = (await client.get(TASKS, headers=other)).json()
    for response in responses:
        assert response.status_code == 404
        assert response.json() == {"message": "Task not found"}
    assert other_list == {"data": []}


async def test_list_is_newest_first_and_holds_nothing_that_names_the_request() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        ids = [(await create(client, body(seed=n)))["task_id"] for n in range(3)]
        await client.post(f"/_sandbox/tasks/{ids[1]}/fail")
        data = (await client.get(TASKS, headers=AUTH)).json()["data"]
    assert [item["task_id"] for item in data] == ids[::-1]
    assert [item["status"] for item in data] == ["CREATED", "FAILED", "CREATED"]
    assert {tuple(item) for item in data} == {("task_id", "status", "generated")}


# -- chaos ----------------------------------------------------------------------------------------------


async def test_burst_429_answers_a_message_without_retry_after() -> None:
    async with serve(create_magnific_sandbox(knobs=SandboxKnobs(burst_429=2))) as client:
        responses = [await client.get(TASKS, headers=AUTH) for _ in range(3)]
    assert [response.status_code for response in responses] == [429, 429, 200]
    assert "retry-after" not in responses[0].headers
    assert list(responses[0].json()) == ["message"]


async def test_burst_5xx_answers_internal_server_error_and_creates_nothing() -> None:
    async with serve(create_magnific_sandbox(knobs=SandboxKnobs(burst_5xx=1))) as client:
        first = await client.post(CREATE_720P, headers=AUTH, json=body())
        second = await client.post(CREATE_720P, headers=AUTH, json=body())
        creates = (await client.get("/_sandbox/creates")).json()
    assert first.status_code == 500
    assert first.json() == {"message": "Internal Server Error"}
    assert second.status_code == 200
    assert creates["attempts"] == 2
    assert [entry["task_id"] for entry in creates["accepted"]] == [second.json()["data"]["task_id"]]


async def test_latency_delays_answers() -> None:
    async with serve(create_magnific_sandbox(knobs=SandboxKnobs(latency_s=0.2))) as client:
        started = time.monotonic()
        await client.get(TASKS, headers=AUTH)
        assert time.monotonic() - started >= 0.2


# -- sandbox control --------------------------------------------------------------------------------------


async def test_knobs_can_be_replaced_at_runtime() -> None:
    async with serve(create_magnific_sandbox()) as client:
        before = (await client.get("/_sandbox/knobs")).json()
        put = await client.put("/_sandbox/knobs", json={"burst_429": 1})
        limited = await client.get(TASKS, headers=AUTH)
        typo = await client.put("/_sandbox/knobs", json={"burst_492": 1})
    assert before["burst_429"] == 0
    assert put.json()["burst_429"] == 1
    assert limited.status_code == 429
    assert typo.status_code == 400


async def test_force_complete_fail_and_empty_completion() -> None:
    async with serve(create_magnific_sandbox(knobs=SLOW)) as client:
        first, second, third = [await create(client, body()) for _ in range(3)]
        completed = await client.post(f"/_sandbox/tasks/{first['task_id']}/complete")
        failed = await client.post(f"/_sandbox/tasks/{second['task_id']}/fail")
        empty = await client.post(f"/_sandbox/tasks/{third['task_id']}/complete?empty=true")
        again = await client.post(f"/_sandbox/tasks/{first['task_id']}/fail")
        missing = await client.post("/_sandbox/tasks/nope/complete")
    assert completed.json()["data"]["status"] == "COMPLETED"
    assert len(completed.json()["data"]["generated"]) == 1
    assert failed.json()["data"]["status"] == "FAILED"
    assert empty.json()["data"] == {"task_id": third["task_id"], "status": "COMPLETED", "generated": []}
    assert again.status_code == 409
    assert missing.status_code == 404


# -- callbacks ----------------------------------------------------------------------------------------------


async def test_callbacks_follow_each_status_change_unwrapped_and_signed() -> None:
    receiver = Receiver()
    async with serve(create_magnific_sandbox(knobs=QUICK, callback_client=receiver.client())) as client:
        created = await create(client, body(webhook_url=CALLBACK_URL))
        await eventually(receiver.arrived(2))
        polled = (await client.get(f"{TASKS}/{created['task_id']}", headers=AUTH)).json()["data"]
    task_id = created["task_id"]
    assert [str(request.url) for request in receiver.requests] == [CALLBACK_URL, CALLBACK_URL]
    assert receiver.bodies() == [{"task_id": task_id, "status": "IN_PROGRESS", "generated": []}, polled]
    assert list(receiver.bodies()[1]) == ["task_id", "status", "generated"]
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert re.fullmatch(r"msg_[0-9a-f]{32}", request.headers["webhook-id"])
        assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", request.headers["webhook-signature"])
        assert verify_by_hand(request, b"magnific-sandbox-secret")
        # The reference implementation agrees, and refuses the body once changed after signing.
        Webhook(SECRET).verify(request.content, dict(request.headers))
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(request.content + b" ", dict(request.headers))
    assert receiver.requests[0].headers["webhook-id"] != receiver.requests[1].headers["webhook-id"]


async def test_a_task_that_ends_before_it_would_run_calls_back_once_at_its_end() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=2.0, complete_after_s=0.1)
    async with serve(create_magnific_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        created = await create(client, body(webhook_url=CALLBACK_URL))
        await eventually(receiver.arrived(1), timeout=1.0)  # at its end, not when it would have started
        await asyncio.sleep(0.1)
    assert [b["status"] for b in receiver.bodies()] == ["COMPLETED"]
    assert receiver.bodies()[0]["task_id"] == created["task_id"]


async def test_failed_callback_carries_no_reason() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.0, complete_after_s=0.05, failure_rate=1.0)
    async with serve(create_magnific_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        created = await create(client, body(webhook_url=CALLBACK_URL))
        await eventually(receiver.arrived(2))
    assert receiver.bodies()[-1] == {"task_id": created["task_id"], "status": "FAILED", "generated": []}


async def test_raw_secret_signs_with_its_utf8_bytes() -> None:
    receiver = Receiver()
    app = create_magnific_sandbox(webhook_secret="plain-secret", knobs=SLOW, callback_client=receiver.client())
    async with serve(app) as client:
        created = await create(client, body(webhook_url=CALLBACK_URL))
        await client.post(f"/_sandbox/tasks/{created['task_id']}/complete")
        await eventually(receiver.arrived(1))
    assert verify_by_hand(receiver.requests[0], b"plain-secret")


async def test_failed_delivery_is_retried_with_the_same_webhook_id() -> None:
    receiver = Receiver(statuses=(500, 503, 200))
    async with serve(create_magnific_sandbox(knobs=SLOW, callback_client=receiver.client())) as client:
        created = await create(client, body(webhook_url=CALLBACK_URL))
        await client.post(f"/_sandbox/tasks/{created['task_id']}/complete")
        await eventually(receiver.arrived(3))
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert [(entry["attempt"], entry["status_code"]) for entry in log] == [(1, 500), (2, 503), (3, 200)]
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 1
    assert len({request.content for request in receiver.requests}) == 1


async def test_drop_and_duplicate_knobs_apply_to_every_callback() -> None:
    receiver = Receiver()
    app = create_magnific_sandbox(knobs=SLOW, callback_client=receiver.client())
    async with serve(app) as client:
        await client.put("/_sandbox/knobs", json={"drop_callback_rate": 1.0, "complete_after_s": 60})
        dropped = await create(client, body(webhook_url=CALLBACK_URL))
        await client.post(f"/_sandbox/tasks/{dropped['task_id']}/complete")
        await client.put("/_sandbox/knobs", json={"duplicate_callback_rate": 1.0, "complete_after_s": 60})
        duplicated = await create(client, body(webhook_url=CALLBACK_URL))
        await client.post(f"/_sandbox/tasks/{duplicated['task_id']}/complete")
        await eventually(receiver.arrived(2))
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert [(e["kind"], e["status"]) for e in log if e["task_id"] == dropped["task_id"]] == [("dropped", "COMPLETED")]
    assert [e["kind"] for e in log if e["task_id"] == duplicated["task_id"]] == ["delivery", "duplicate"]
    assert receiver.requests[0].content == receiver.requests[1].content
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]


async def test_out_of_order_sends_in_progress_after_the_terminal_callback() -> None:
    receiver = Receiver()
    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2, out_of_order_rate=1.0)
    async with serve(create_magnific_sandbox(knobs=knobs, callback_client=receiver.client())) as client:
        await create(client, body(webhook_url=CALLBACK_URL))
        await eventually(receiver.arrived(2))
        log = (await client.get("/_sandbox/callbacks")).json()["callbacks"]
    assert [b["status"] for b in receiver.bodies()] == ["COMPLETED", "IN_PROGRESS"]
    assert [e["kind"] for e in log] == ["delivery", "out_of_order"]
    assert all(verify_by_hand(request, b"magnific-sandbox-secret") for request in receiver.requests)


async def test_no_webhook_url_means_no_callbacks() -> None:
    receiver = Receiver()
    async with serve(create_magnific_sandbox(knobs=QUICK, callback_client=receiver.client())) as client:
        await create(client, body())
        await asyncio.sleep(0.3)
    assert receiver.requests == []


async def test_shutdown_cancels_pending_callbacks_and_leaves_injected_client_open() -> None:
    receiver = Receiver()
    callback_client = receiver.client()
    app = create_magnific_sandbox(knobs=SLOW, callback_client=callback_client)
    before = asyncio.all_tasks()
    async with serve(app) as client:
        await create(client, body(webhook_url=CALLBACK_URL))
        assert len(asyncio.all_tasks() - before) >= 1
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert not callback_client.is_closed
    assert receiver.requests == []
    await callback_client.aclose()
