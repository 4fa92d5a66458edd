"""Caller webhooks over real HTTP: a job's `webhook_url` gets its events signed for any Standard Webhooks library,
retried on the schedule with one webhook-id, never redirected, refused for private targets, and one dead
receiver never delays another's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import standardwebhooks

from service.ids import split_api_key
from storage import DeliveryStatus, DeliveryView
from tests.harness import Stack, stack
from tests.receivers import Receiver, black_hole, receiving
from tests.test_egress import LOOPBACK, resolving

SHORT = {"webhook_allow_private": True, "webhook_retry_schedule": (0.0, 0.2, 0.2)}


def key_id(running: Stack) -> str:
    split = split_api_key(running.key)
    assert split is not None
    return split[0]


async def create(running: Stack, **fields: Any) -> httpx.Response:
    body = {"model": "seedancee2/pro", "input": {"prompt": "a drone shot of waves", "duration": 5}, **fields}
    return await running.client.post(f"{running.url}/v1/jobs", json=body, headers=running.headers)


async def create_job(running: Stack, **fields: Any) -> str:
    response = await create(running, **fields)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def settled(running: Stack, job_id: str, timeout: float = 10.0) -> list[DeliveryView]:
    """The job's deliveries once none is pending."""
    async with asyncio.timeout(timeout):
        while True:
            views = await running.store.job_deliveries(key_id(running), job_id)
            if views and all(v.delivery.status != DeliveryStatus.PENDING for v in views):
                return views
            await asyncio.sleep(0.05)


async def sse_data_line(running: Stack, job_id: str, event_type: str) -> bytes:
    """The raw `data:` line of the job's event of `event_type`, as its SSE stream sends it."""
    url = f"{running.url}/v1/jobs/{job_id}/events"
    async with running.client.stream("GET", url, headers=running.headers, timeout=10) as stream:
        current = None
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                current = line.removeprefix("event: ")
            elif line.startswith("data: ") and current == event_type:
                return line.removeprefix("data: ").encode()
    raise AssertionError(f"no {event_type} on the stream")


async def test_a_job_webhook_url_gets_job_succeeded_verified_by_standardwebhooks_with_the_sse_data(
    tmp_path: Path,
) -> None:
    receiver = Receiver.scripted()
    async with receiving(receiver) as hooks, stack(tmp_path, webhook_allow_private=True) as running:
        job_id = await create_job(running, webhook_url=f"{hooks}/reelay")
        [got] = await receiver.wait_for(1)
        data_line = await sse_data_line(running, job_id, "job.succeeded")
        job = await running.job(job_id)
        secret = await running.store.webhook_secret(key_id(running), new_secret="whsec_unused")
    # The default filter: how the job ended, nothing before.
    assert got.path == "/reelay"
    payload = standardwebhooks.Webhook(secret.secret).verify(got.body, got.headers)
    assert payload["type"] == "job.succeeded"
    assert got.body.endswith(b',"data":' + data_line + b"}")  # byte for byte the SSE data line
    assert got.data["job"] == job
    assert got.headers["webhook-id"].startswith("msg_")
    assert got.headers["user-agent"].startswith("Reelay-Webhooks/")
    assert "webhook_url" not in job
    assert "webhook_events" not in job


async def test_500_twice_then_200_is_three_attempts_with_one_webhook_id_all_in_the_attempt_log(
    tmp_path: Path,
) -> None:
    receiver = Receiver.scripted([(500, {}, b"down"), (500, {}, b"still down")])
    async with receiving(receiver) as hooks, stack(tmp_path, **SHORT) as running:
        job_id = await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])
        got = await receiver.wait_for(3)
        [view] = await settled(running, job_id)
    assert len(got) == 3
    assert len({g.headers["webhook-id"] for g in got}) == 1
    assert {g.body for g in got} == {got[0].body}  # the same message each time, signed anew
    assert view.delivery.id == got[0].headers["webhook-id"]
    assert view.delivery.status == DeliveryStatus.SUCCEEDED
    assert view.delivery.attempts == 3
    assert [a.status_code for a in view.attempts] == [500, 500, 200]
    assert [a.response_body for a in view.attempts] == ["down", "still down", "ok"]


async def test_a_redirect_is_not_followed_and_the_attempt_log_says_where_it_pointed(tmp_path: Path) -> None:
    receiver = Receiver.scripted([(301, {"location": "https://elsewhere.example/hook"}, b"")])
    settings = {**SHORT, "webhook_retry_schedule": (0.0,)}
    async with receiving(receiver) as hooks, stack(tmp_path, **settings) as running:
        job_id = await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])
        [view] = await settled(running, job_id)
    assert [g.path for g in receiver.got] == ["/h"]
    assert view.delivery.status == DeliveryStatus.FAILED
    [attempt] = view.attempts
    assert attempt.status_code == 301
    assert attempt.error == "redirect (301) to https://elsewhere.example/hook not followed"


async def test_410_fails_the_delivery_at_once(tmp_path: Path) -> None:
    receiver = Receiver.scripted([(410, {}, b"gone")])
    async with receiving(receiver) as hooks, stack(tmp_path, **SHORT) as running:
        job_id = await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])
        [view] = await settled(running, job_id)
    assert len(receiver.got) == 1
    assert (view.delivery.status, [a.status_code for a in view.attempts]) == (DeliveryStatus.FAILED, [410])


async def test_retry_after_delays_the_next_attempt_beyond_the_schedule(tmp_path: Path) -> None:
    receiver = Receiver.scripted([(503, {"retry-after": "2"}, b"busy")])
    async with receiving(receiver) as hooks, stack(tmp_path, **SHORT) as running:
        await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])
        first, second = await receiver.wait_for(2)
    assert second.at - first.at >= 2.0  # the schedule alone would have retried after 0.2 s


async def test_a_receiver_body_that_never_ends_is_cut_at_1_kb_within_the_timeout(tmp_path: Path) -> None:
    receiver = Receiver.scripted(endless=True)
    settings = {**SHORT, "webhook_timeout_seconds": 3.0}
    async with receiving(receiver) as hooks, stack(tmp_path, **settings) as running:
        job_id = await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])
        [view] = await settled(running, job_id)
    [attempt] = view.attempts
    assert (view.delivery.status, attempt.status_code) == (DeliveryStatus.SUCCEEDED, 200)
    assert attempt.response_body == "x" * 1024
    assert attempt.duration_ms < 3000


async def test_webhook_fields_are_checked_at_create(tmp_path: Path) -> None:
    async with stack(tmp_path) as running:
        refused = await create(running, webhook_url="http://localhost:9/hook")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "invalid_webhook_url"
        assert error["details"] == {"field": "webhook_url", "reason": "loopback", "host": "localhost"}
        assert "REELAY_WEBHOOK_ALLOW_PRIVATE" in error["message"]
        private = (await create(running, webhook_url="http://10.1.2.3/hook")).json()["error"]
        assert (private["code"], private["details"]["reason"]) == ("invalid_webhook_url", "private")
        scheme = (await create(running, webhook_url="ftp://hooks.example.com/x")).json()["error"]
        assert (scheme["code"], scheme["details"]["reason"]) == ("invalid_webhook_url", "unsupported_scheme")
        unknown = await create(running, webhook_url="https://hooks.example.com/x", webhook_events=["job.done"])
        assert unknown.status_code == 400
        assert "'job.done'" in unknown.json()["error"]["message"]
        assert "job.succeeded" in unknown.json()["error"]["details"]["allowed"]
        empty = await create(running, webhook_url="https://hooks.example.com/x", webhook_events=[])
        assert empty.status_code == 400
        alone = await create(running, webhook_events=["job.succeeded"])
        assert (alone.status_code, alone.json()["error"]["details"]["field"]) == (400, "webhook_events")
        jobs = (await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)).json()["data"]
        assert jobs == []


async def test_a_name_that_passed_registration_but_resolves_to_loopback_is_refused_at_connect_time(
    tmp_path: Path,
) -> None:
    receiver = Receiver.scripted()
    rebound = resolving({"receiver.test": [LOOPBACK]})  # a DNS record pointing at 127.0.0.1
    settings = {"webhook_retry_schedule": (0.0,)}
    async with receiving(receiver) as hooks, stack(tmp_path, webhook_resolve=rebound, **settings) as running:
        port = hooks.rsplit(":", 1)[1]
        job_id = await create_job(running, webhook_url=f"http://receiver.test:{port}/h", webhook_events=["job.created"])
        [view] = await settled(running, job_id)
    assert receiver.got == []
    [attempt] = view.attempts
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("refused: loopback address 127.0.0.1 (receiver.test resolves to it)")
    assert "REELAY_WEBHOOK_ALLOW_PRIVATE=true" in attempt.error


async def test_a_black_holed_receiver_does_not_delay_a_healthy_ones_deliveries(tmp_path: Path) -> None:
    healthy = Receiver.scripted()
    async with (
        black_hole() as hole,
        receiving(healthy) as hooks,
        stack(tmp_path, webhook_allow_private=True, shutdown_drain_seconds=0.5) as running,
    ):
        for _ in range(20):  # more than its per-receiver cap, all hanging until the 15 s timeout
            await create_job(running, webhook_url=f"{hole.url}/h", webhook_events=["job.created"])
        sent: dict[str, float] = {}
        for _ in range(10):
            created = time.time()
            sent[await create_job(running, webhook_url=f"{hooks}/h", webhook_events=["job.created"])] = created
            await asyncio.sleep(0.05)
        got = await healthy.wait_for(10)
        assert hole.connections == running.settings.webhook_endpoint_concurrency  # held: never answered
    late = {g.data["job"]["id"]: g.at - sent[g.data["job"]["id"]] for g in got}
    assert max(late.values()) < 1.0, late


async def test_after_a_rotation_a_delivery_verifies_with_either_secret_and_shows_in_the_log_metrics_and_api(
    tmp_path: Path, capfd: Any
) -> None:
    receiver = Receiver.scripted()
    async with receiving(receiver) as hooks, stack(tmp_path, webhook_allow_private=True) as running:
        api = f"{running.url}/v1/webhook-secret"
        old = (await running.client.get(api, headers=running.headers)).json()["secret"]
        rotated = (await running.client.post(f"{api}/rotate", headers=running.headers)).json()
        new = rotated["secret"]
        job_id = await create_job(running, webhook_url=f"{hooks}/h")
        [got] = await receiver.wait_for(1)
        await settled(running, job_id)
        listed = await running.client.get(f"{running.url}/v1/jobs/{job_id}/deliveries", headers=running.headers)
        metrics = (await running.client.get(f"{running.url}/metrics")).text
    assert old != new
    assert rotated["previous_secret_expires_at"] is not None
    assert len(got.headers["webhook-signature"].split(" ")) == 2  # v1,<new> v1,<old>
    for secret in (old, new):  # a receiver that has either secret accepts it
        assert standardwebhooks.Webhook(secret).verify(got.body, got.headers)["type"] == "job.succeeded"
    [delivery] = listed.json()["data"]
    assert delivery["id"] == got.headers["webhook-id"]
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    assert 'reelay_webhook_deliveries_total{outcome="succeeded"} 1.0' in metrics
    assert 'reelay_webhook_attempt_seconds_count{outcome="succeeded"} 1.0' in metrics
    logged = capfd.readouterr().out
    assert logged.count("webhook.attempt") == 1
    assert old not in logged
    assert new not in logged
    assert '"data":' not in logged  # nor the body
