"""Routes over real HTTP against the emulators: a job on a route goes to the first candidate that can serve it, and
moves to the next only while no provider can have accepted it (never paying twice); GET /v1/models lists routes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from reelay_signing import sign_header
from sandbox import SANDBOXES, SandboxKnobs
from service.app import enabled_adapters
from service.circuits import ADMITTED, Admission
from service.gateway import Gateway
from service.hub import EventHub
from service.loops import Poller
from service.metrics import Metrics
from service.providers import all_models
from service.routes import Route
from service.runtime import Runtime
from tests.harness import LoseFirstCreateAnswer, Stack, collect_events, stack
from tests.ports import free_ports
from tests.processes import REELAY, reelay_env

QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2)
FAST = "seedancee2/fast"  # lookup after a lost answer
MINI = "seedancee2/mini"
MINDVIDEO = "mindvideo/doubao-seedance-2-0-fast"  # idempotency key after a lost answer
IMINI = "imini/doubao/seedance-2.0"  # neither: a lost answer fails the job
MAGNIFIC = "magnific/seedance-2-mini"
CREATE_PATHS = {"seedancee2": "/v1/videos/generations", "mindvideo": "/api/v1/tasks", "imini": "/v1/videos/generate"}
WRONG_KEY = {"seedancee2": {"api_key": "sk_seedancee2_live_wrong"}}  # every create answers 401: a refusal


def _route(
    *candidates: str, strategy: str = "priority", route_id: str = "sd2", retry_failed: bool = False
) -> dict[str, Route]:
    route = Route(id=route_id, strategy=strategy, candidates=candidates, retry_failed=retry_failed)  # type: ignore[arg-type]
    return {route_id: route}


async def _creates(running: Stack, provider: str) -> dict[str, Any]:
    creates: dict[str, Any] = await running.sandbox(provider, "GET", "/_sandbox/creates")
    return creates


async def _finished(running: Stack, job_id: str, timeout: float = 15) -> dict[str, Any]:
    return await running.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=timeout)


def _left(job: dict[str, Any]) -> list[str | None]:
    return [attempt.get("left") for attempt in job["attempts"]]


class DropCreatesUnsent(httpx.AsyncHTTPTransport):
    """Loses the first `count` creates to `path` before they reach the provider, as a connection that dies while
    sending would: the caller cannot tell that from a lost answer."""

    def __init__(self, path: str, count: int = 1_000_000) -> None:
        super().__init__()
        self.path = path
        self.count = count
        self.dropped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == self.path and self.dropped < self.count:
            self.dropped += 1
            raise httpx.ReadError("connection reset while sending", request=request)
        return await super().handle_async_request(request)


class OpenCircuit:
    """Provider health with `provider`'s circuit open for good: a stand-in for the interface, not the breaker."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.asked: list[str] = []

    async def admit(self, provider: str, now: float) -> Admission:
        self.asked.append(provider)
        return Admission(allowed=False, retry_at=now + 60) if provider == self.provider else ADMITTED

    async def record(
        self, provider: str, *, ok: bool, counts: bool, latency: float, error: str | None, now: float
    ) -> None:
        return None

    async def release(self, provider: str, admission: Admission, now: float) -> None:
        return None


# -- failover ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "provider_code"),
    [("refuse_creates", "invalid_request"), ("insufficient_credits", "insufficient_credits")],
)
async def test_a_route_whose_first_candidate_refuses_ends_succeeded_on_the_second(
    tmp_path: Path, knob: str, provider_code: str
) -> None:
    async with stack(
        tmp_path, knobs=QUICK, providers=("seedancee2", "mindvideo"), routes=_route(FAST, MINDVIDEO)
    ) as running:
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={knob: True})
        created = await running.submit("sd2")
        assert (created["model"], created["routed_model"], created["provider"]) == ("sd2", FAST, "seedancee2")
        frames: list[dict[str, Any]] = []
        await asyncio.wait_for(
            collect_events(running, f"{running.url}/v1/jobs/{created['id']}/events", "job.succeeded", frames), 15
        )
        done = await running.job(created["id"])
        metrics = (await running.client.get(f"{running.url}/metrics")).text
        refused, served = await _creates(running, "seedancee2"), await _creates(running, "mindvideo")
    assert done["status"] == "succeeded"
    assert (done["model"], done["routed_model"], done["provider"]) == ("sd2", MINDVIDEO, "mindvideo")
    first, second = done["attempts"]
    assert (first["model"], first["provider"], first["left"]) == (FAST, "seedancee2", "rejected")
    assert first["error"]["code"] == "provider_rejected"
    assert first["error"]["provider_code"] == provider_code
    assert first.get("provider_task_id") is None
    assert (second["model"], second["provider"], second.get("left")) == (MINDVIDEO, "mindvideo", None)
    assert second["provider_task_id"] == done["provider_task_id"]
    assert [f["type"] for f in frames].count("job.rerouted") == 1
    [moved] = [f for f in frames if f["type"] == "job.rerouted"]
    assert moved["detail"] == {"from": FAST, "to": MINDVIDEO, "reason": "rejected"}
    assert moved["job"]["routed_model"] == MINDVIDEO
    assert (refused["attempts"], len(refused["accepted"])) == (1, 0)
    assert len(served["accepted"]) == 1
    assert 'reelay_route_failovers_total{reason="rejected",route="sd2"} 1.0' in metrics


async def test_a_route_with_no_next_candidate_fails_as_a_job_on_a_model_id_does(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=QUICK, provider_overrides=WRONG_KEY, routes=_route(FAST)) as running:
        created = await running.submit("sd2")  # every create answers 401 invalid_api_key
        done = await _finished(running, created["id"])
        events = await running.event_types(created["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "provider_rejected"
    assert _left(done) == [None]
    assert "job.rerouted" not in events


async def test_a_lost_answer_at_a_provider_without_idempotency_or_lookup_is_never_rerouted(tmp_path: Path) -> None:
    # imini makes the task, then holds its answer past Reelay's upstream timeout: the answer is lost.
    async with stack(
        tmp_path,
        knobs=QUICK,
        providers=("imini", "mindvideo"),
        routes=_route(IMINI, MINDVIDEO),
        upstream_timeout_seconds=0.5,
    ) as running:
        await running.sandbox("imini", "PUT", "/_sandbox/knobs", json={"hang_s": 3})
        created = await running.submit("sd2")
        done = await _finished(running, created["id"])
        paid, other = await _creates(running, "imini"), await _creates(running, "mindvideo")
        events = await running.event_types(created["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "submit_outcome_unknown"
    assert done["routed_model"] == IMINI
    assert [a.get("answer_lost") for a in done["attempts"]] == [True]
    assert len(paid["accepted"]) == 1  # imini has the task (and may bill it)...
    assert other["attempts"] == 0  # ...so nothing was sent anywhere else
    assert "job.rerouted" not in events


async def test_a_lost_answer_the_lookup_finds_is_adopted_not_rerouted(tmp_path: Path) -> None:
    transport = LoseFirstCreateAnswer(CREATE_PATHS["seedancee2"])
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(
            tmp_path,
            knobs=QUICK,
            providers=("seedancee2", "mindvideo"),
            http_client=client,
            routes=_route(FAST, MINDVIDEO),
            route_transient_attempts=1,
        ) as running,
    ):
        created = await running.submit("sd2")
        done = await _finished(running, created["id"], timeout=20)
        found, other = await _creates(running, "seedancee2"), await _creates(running, "mindvideo")
    assert done["status"] == "succeeded"
    assert done["routed_model"] == FAST
    assert [(a.get("left"), a.get("answer_lost")) for a in done["attempts"]] == [(None, True)]
    assert [a["id"] for a in found["accepted"]] == [done["provider_task_id"]]
    assert other["attempts"] == 0


async def test_lost_answers_at_a_lookup_provider_move_the_job_once_the_lookup_proves_no_task(tmp_path: Path) -> None:
    transport = DropCreatesUnsent(CREATE_PATHS["seedancee2"])
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(
            tmp_path,
            knobs=QUICK,
            providers=("seedancee2", "mindvideo"),
            http_client=client,
            routes=_route(FAST, MINDVIDEO),
            route_transient_attempts=2,
        ) as running,
    ):
        created = await running.submit("sd2")
        done = await _finished(running, created["id"], timeout=20)
        nothing, served = await _creates(running, "seedancee2"), await _creates(running, "mindvideo")
    assert transport.dropped == 2  # two lost creates, each followed by a lookup that found no task
    assert done["status"] == "succeeded"
    first, _ = done["attempts"]
    assert (first["left"], first["answer_lost"]) == ("not_created", True)
    assert nothing["attempts"] == 0
    assert len(served["accepted"]) == 1


@pytest.mark.parametrize("failing", [{"burst_5xx": 1000}, {"rate_limit": True}])
async def test_transient_failures_in_a_row_move_the_job_after_the_setting(
    tmp_path: Path, failing: dict[str, Any]
) -> None:
    async with stack(
        tmp_path,
        knobs=QUICK,
        providers=("seedancee2", "mindvideo"),
        routes=_route(FAST, MINDVIDEO),
        route_transient_attempts=2,
    ) as running:
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=failing)
        created = await running.submit("sd2")
        done = await _finished(running, created["id"], timeout=20)
        failing = await _creates(running, "seedancee2")
    assert done["status"] == "succeeded"
    assert done["routed_model"] == MINDVIDEO
    first, _ = done["attempts"]
    assert first["left"] == "unavailable"
    assert first["error"]["code"] == "provider_unavailable"
    assert "on 2 attempts in a row" in first["error"]["message"]
    assert failing["attempts"] == 2


async def test_transient_failures_after_a_lost_answer_never_move_the_job(tmp_path: Path) -> None:
    # MindVideo's replay with the same Idempotency-Key may still find the lost create's task: it is never left.
    transport = DropCreatesUnsent(CREATE_PATHS["mindvideo"], count=1)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(
            tmp_path,
            knobs=QUICK,
            providers=("seedancee2", "mindvideo"),
            http_client=client,
            routes=_route(MINDVIDEO, FAST),
            route_transient_attempts=2,
        ) as running,
    ):
        await running.sandbox("mindvideo", "PUT", "/_sandbox/knobs", json={"burst_5xx": 1000})
        response = await running.client.post(
            f"{running.url}/v1/jobs",
            json={"model": "sd2", "input": {"prompt": "waves"}, "deadline_seconds": 4},
            headers=running.headers,
        )
        done = await _finished(running, response.json()["id"])
        retried, other = await _creates(running, "mindvideo"), await _creates(running, "seedancee2")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert [(a.get("left"), a.get("answer_lost")) for a in done["attempts"]] == [(None, True)]
    # A lost create and a 500 at least: the route's 2 transient failures, and still on MindVideo.
    assert transport.dropped + retried["attempts"] >= 2
    assert other["attempts"] == 0


async def test_an_idempotent_replay_the_provider_refuses_moves_the_job_after_a_lost_answer(tmp_path: Path) -> None:
    # The first create to MindVideo is lost; its replay with the same Idempotency-Key is refused: no task exists.
    transport = DropCreatesUnsent(CREATE_PATHS["mindvideo"], count=1)
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(
            tmp_path,
            knobs=QUICK,
            providers=("seedancee2", "mindvideo"),
            http_client=client,
            routes=_route(MINDVIDEO, FAST),
        ) as running,
    ):
        await running.sandbox("mindvideo", "PUT", "/_sandbox/knobs", json={"refuse_creates": True})
        created = await running.submit("sd2")
        done = await _finished(running, created["id"], timeout=20)
        refused, served = await _creates(running, "mindvideo"), await _creates(running, "seedancee2")
    assert transport.dropped == 1
    assert done["status"] == "succeeded"
    assert done["routed_model"] == FAST
    first, _ = done["attempts"]
    assert (first["left"], first["answer_lost"]) == ("rejected", True)
    assert (refused["attempts"], len(refused["accepted"])) == (1, 0)
    assert len(served["accepted"]) == 1


async def test_an_open_circuit_sends_the_job_to_the_next_candidate_unsent(tmp_path: Path) -> None:
    health = OpenCircuit("seedancee2")
    async with stack(
        tmp_path,
        knobs=QUICK,
        providers=("seedancee2", "mindvideo"),
        routes=_route(FAST, MINDVIDEO),
        health=health,
    ) as running:
        created = await running.submit("sd2")
        done = await _finished(running, created["id"])
        unsent = await _creates(running, "seedancee2")
    assert done["status"] == "succeeded"
    assert done["routed_model"] == MINDVIDEO
    first, _ = done["attempts"]
    assert (first["left"], first["error"]["code"]) == ("circuit_open", "circuit_open")
    assert unsent["attempts"] == 0
    assert health.asked[:2] == ["seedancee2", "mindvideo"]


async def test_a_job_on_a_model_id_waits_for_an_open_circuit_and_is_not_rerouted(tmp_path: Path) -> None:
    async with stack(
        tmp_path, knobs=QUICK, providers=("seedancee2", "mindvideo"), health=OpenCircuit("seedancee2")
    ) as running:
        created = await running.submit(FAST)
        await asyncio.sleep(0.5)  # the dispatcher has had it (and put it back)
        job = await running.job(created["id"])
        record = await running.store.get_job(created["id"])
    assert job["status"] == "queued"
    assert _left(job) == [None]
    assert record is not None
    assert record.dispatch_attempts == 0


# -- retry_failed --------------------------------------------------------------------------------------------------

FAILS = SandboxKnobs(processing_after_s=0.05, complete_after_s=1.0, failure_rate=1.0)  # every task fails after 1 s
RANK = {"queued": 0, "processing": 1, "succeeded": 2, "failed": 2, "cancelled": 2}


async def _signed_callback(running: Stack, task_id: str, job_id: str, status: str) -> str:
    """Post a Seedancee2 callback about `task_id`, signed with the emulator's secret as the provider signs them."""
    data: dict[str, Any] = {"id": task_id, "status": status, "model": "fast", "metadata": {"reelay_job_id": job_id}}
    if status == "completed":
        data |= {"credits_charged": 80, "output": {"video_url": f"https://media.example/{task_id}.mp4"}}
    body = msgspec.json.encode({"data": data})
    signature = sign_header(body, SANDBOXES["seedancee2"].webhook_secret or "", timestamp=int(time.time()))
    response = await running.client.post(
        f"{running.url}/webhooks/seedancee2",
        content=body,
        headers={"Content-Type": "application/json", "X-Seedancee2-Signature": signature},
    )
    assert response.status_code == 200, response.text
    result: str = response.json()["result"]
    return result


async def _moved(running: Stack, job_id: str, timeout: float = 10) -> dict[str, Any]:
    """The job once it has left its first candidate."""
    async with asyncio.timeout(timeout):
        while len((job := await running.job(job_id))["attempts"]) < 2:
            await asyncio.sleep(0.02)
    return job


async def test_retry_failed_moves_a_failed_generation_to_the_next_candidate_and_its_status_never_goes_back(
    tmp_path: Path,
) -> None:
    async with stack(
        tmp_path,
        knobs=QUICK,
        providers=("seedancee2", "mindvideo"),
        routes=_route(FAST, MINDVIDEO, retry_failed=True),
        callback_grace_seconds=0.1,  # a first status check sees the task processing before it fails
    ) as running:
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=msgspec.structs.asdict(FAILS))
        created = await running.submit("sd2")
        frames: list[dict[str, Any]] = []
        await asyncio.wait_for(
            collect_events(running, f"{running.url}/v1/jobs/{created['id']}/events", "job.succeeded", frames), 20
        )
        done = await running.job(created["id"])
        metrics = (await running.client.get(f"{running.url}/metrics")).text
        failed, served = await _creates(running, "seedancee2"), await _creates(running, "mindvideo")
    assert done["status"] == "succeeded"
    assert (done["routed_model"], done["provider"]) == (MINDVIDEO, "mindvideo")
    first, second = done["attempts"]
    assert (first["model"], first["left"], first["error"]["code"]) == (FAST, "generation_failed", "generation_failed")
    assert first["provider_task_id"] == failed["accepted"][0]["id"]
    estimate = created["cost"]["credits_estimate"]
    assert first["cost"]["credits_charged"] == 0  # what Seedancee2 said the failed task cost: all refunded
    assert first["cost"]["credits_refunded"] == estimate
    assert (second["model"], second.get("left"), second["provider_task_id"]) == (
        MINDVIDEO,
        None,
        done["provider_task_id"],
    )
    [moved] = [f for f in frames if f["type"] == "job.rerouted"]
    assert moved["detail"] == {"from": FAST, "to": MINDVIDEO, "reason": "generation_failed"}
    assert moved["job"]["status"] == "processing"  # it was processing when its task failed...
    statuses = [RANK[f["job"]["status"]] for f in frames]
    assert statuses == sorted(statuses), [f["job"]["status"] for f in frames]  # ...and never showed queued again
    assert len(failed["accepted"]) == len(served["accepted"]) == 1
    assert 'reelay_route_failovers_total{reason="generation_failed",route="sd2"} 1.0' in metrics


async def test_without_retry_failed_a_failed_generation_fails_the_job_on_a_route(tmp_path: Path) -> None:
    async with stack(
        tmp_path, knobs=FAILS, providers=("seedancee2", "mindvideo"), routes=_route(FAST, MINDVIDEO)
    ) as running:
        created = await running.submit("sd2")
        done = await _finished(running, created["id"])
        events = await running.event_types(created["id"])
        other = await _creates(running, "mindvideo")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "generation_failed"
    assert _left(done) == [None]
    assert "job.rerouted" not in events
    assert other["attempts"] == 0


async def test_a_stale_callback_of_the_left_task_never_changes_the_job(tmp_path: Path) -> None:
    # Both candidates at Seedancee2: the callback reaches the same endpoint and names the same job.
    async with stack(tmp_path, knobs=FAILS, routes=_route(FAST, MINI, retry_failed=True)) as running:
        created = await running.submit("sd2")
        left_task = (await running.accepted(created["id"]))["provider_task_id"]
        # From now on a create makes its task but holds its answer: the job waits on MINI with no task id yet.
        slow = SandboxKnobs(processing_after_s=60, complete_after_s=120, hang_s=3)
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=msgspec.structs.asdict(slow))
        moving = await _moved(running, created["id"])
        assert (moving["routed_model"], moving["provider_task_id"]) == (MINI, None)
        unanswered = await _signed_callback(running, left_task, created["id"], "completed")
        while_unanswered = await running.job(created["id"])
        sent = await running.accepted(created["id"])
        answered = await _signed_callback(running, left_task, created["id"], "completed")
        after = await running.job(created["id"])
    assert (unanswered, answered) == ("ignored", "ignored")
    assert while_unanswered == moving
    assert after == sent
    assert after["status"] == "queued"
    assert (after["routed_model"], after["output"]) == (MINI, None)
    assert after["provider_task_id"] not in (None, left_task)


async def test_a_status_answer_about_the_left_task_never_changes_the_job(tmp_path: Path) -> None:
    # Another worker polled the first task before the job moved on; its answer (the task failed) comes after.
    async with stack(tmp_path, knobs=QUICK, routes=_route(FAST, MINI, retry_failed=True)) as running:
        await running.sandbox(
            "seedancee2", "PUT", "/_sandbox/knobs", json={"processing_after_s": 0.05, "complete_after_s": 60}
        )
        created = await running.submit("sd2")
        left_task = (await running.accepted(created["id"]))["provider_task_id"]
        stale = await running.store.get_job(created["id"])
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=msgspec.structs.asdict(QUICK))
        await running.sandbox("seedancee2", "POST", f"/_sandbox/tasks/{left_task}/fail")  # its callback moves the job
        moved = await running.accepted(created["id"])
        assert moved["routed_model"] == MINI
        assert stale is not None
        await _poller(running).handle(stale)
        after_poll = await running.store.get_job(created["id"])
        done = await _finished(running, created["id"])
        events = await running.event_types(created["id"])
    assert after_poll is not None
    assert (after_poll.status, after_poll.routed_model, after_poll.provider_task_id) == (
        moved["status"],
        MINI,
        moved["provider_task_id"],
    )
    assert done["status"] == "succeeded"
    assert _left(done) == ["generation_failed", None]
    assert events.count("job.rerouted") == 1


def _poller(running: Stack) -> Poller:
    """A second worker's poller on the same database and emulators."""
    runtime = Runtime(
        settings=running.settings,
        store=running.store,
        adapters=enabled_adapters(running.settings, running.client),
        models=all_models(),
        http=running.client,
        hub=EventHub(),
        clock=time.time,
        monotonic=time.monotonic,
        rng=random.Random(0),
        metrics=Metrics.create(),
    )
    return Poller(runtime, Gateway(runtime))


# -- create ----------------------------------------------------------------------------------------------------


async def test_a_job_no_candidate_can_serve_is_a_400_naming_each_candidates_refusal(tmp_path: Path) -> None:
    async with stack(
        tmp_path, knobs=QUICK, providers=("seedancee2", "magnific"), routes=_route(FAST, MAGNIFIC, MINDVIDEO)
    ) as running:
        response = await running.client.post(
            f"{running.url}/v1/jobs",
            json={"model": "sd2", "input": {"prompt": "waves", "duration": 7, "resolution": "1080p"}},
            headers=running.headers,
        )
        served = await running.client.post(
            f"{running.url}/v1/jobs",
            json={"model": "sd2", "input": {"prompt": "waves", "duration": 7}},
            headers=running.headers,
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    refusals = error["details"]["candidates"]
    assert list(refusals) == [FAST, MAGNIFIC, MINDVIDEO]
    assert refusals[FAST].startswith("input.resolution: '1080p' is not offered")
    assert refusals[MAGNIFIC].startswith("input.duration: 7 s is not offered")
    assert refusals[MINDVIDEO] == "provider mindvideo is not configured"
    assert error["details"]["route"] == "sd2"
    for model_id, refusal in refusals.items():
        assert f"{model_id}: {refusal}" in error["message"]
    # Duration 7 is one only Seedancee2 offers: the job starts there, Magnific is not in its plan.
    assert served.status_code == 202, served.text
    assert served.json()["routed_model"] == FAST


async def test_cheapest_picks_the_candidate_with_the_lower_estimate(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=QUICK, routes=_route(FAST, MINI, strategy="cheapest")) as running:
        created = await running.submit("sd2", resolution="720p")
        done = await _finished(running, created["id"])
        accepted = (await _creates(running, "seedancee2"))["accepted"]
    assert created["routed_model"] == MINI
    assert created["cost"]["credits_estimate"] == 50  # mini 10 credits/s at 720p, fast 16
    assert done["status"] == "succeeded"
    assert [a["body"]["model"] for a in accepted] == ["mini"]


async def test_get_models_lists_routes_with_their_candidates_and_capability_union(tmp_path: Path) -> None:
    async with stack(
        tmp_path,
        knobs=QUICK,
        routes=_route(FAST, MAGNIFIC),
        model_aliases={"cheap-video": "sd2"},
    ) as running:
        listed = (await running.client.get(f"{running.url}/v1/models", headers=running.headers)).json()
        aliased = await running.submit("cheap-video")
    assert {m["id"] for m in listed["data"]} >= {FAST, MAGNIFIC}  # models as they were
    assert "sd2" not in {m["id"] for m in listed["data"]}
    [route] = listed["routes"]
    assert route["id"] == "sd2"
    assert route["strategy"] == "priority"
    assert route["retry_failed"] is False
    assert route["candidates"] == [
        {"model": FAST, "provider": "seedancee2", "available": True},
        {"model": MAGNIFIC, "provider": "magnific", "available": False},
    ]
    capabilities = route["capabilities"]
    assert capabilities["durations"] == list(range(4, 16))
    assert capabilities["resolutions"] == ["480p", "720p"]
    assert "9:21" in capabilities["aspect_ratios"]  # Magnific's alone
    assert "adaptive" in capabilities["aspect_ratios"]  # Seedancee2's alone
    assert capabilities["max_reference_images"] == 9
    assert capabilities["audio"] is True
    assert (aliased["model"], aliased["routed_model"]) == ("sd2", FAST)


# -- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ('{"sd2": {"strategy": "priority", "candidates": ["seedancee2/nope"]}}', "unknown candidate model id"),
        ('{"sd/2": {"strategy": "priority", "candidates": ["seedancee2/fast"]}}', "has no '/'"),
    ],
)
def test_a_bad_route_stops_the_start_with_one_line(tmp_path: Path, routes: str, message: str) -> None:
    port = free_ports(1)
    env = reelay_env(tmp_path, port, {}, REELAY_ROUTES=routes)
    result = subprocess.run([REELAY, "serve"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: REELAY_ROUTES: route ")
    assert message in line


async def test_an_open_circuit_sends_a_routes_new_jobs_straight_to_the_next_candidate_until_a_probe_closes_it(
    tmp_path: Path,
) -> None:
    # The real breaker (no stand-in): one failed create opens Seedancee2's circuit for longer than the job's backoff.
    async with stack(
        tmp_path,
        knobs=QUICK,
        providers=("seedancee2", "mindvideo"),
        routes=_route(FAST, MINDVIDEO),
        circuit_failures=1,
        circuit_cooldown_seconds=6.0,
        route_transient_attempts=5,
    ) as running:
        await running.sandbox(
            "seedancee2", "PUT", "/_sandbox/knobs", json={**msgspec.structs.asdict(QUICK), "burst_5xx": 1}
        )
        first = await _finished(running, (await running.submit("sd2"))["id"])
        # The 500 opened the circuit before the route's five transient attempts ran out: it left as circuit_open.
        assert _left(first) == ["circuit_open", None]
        assert first["status"] == "succeeded"
        seen = (await _creates(running, "seedancee2"))["attempts"]
        assert seen == 1

        during = await _finished(running, (await running.submit("sd2"))["id"])
        assert _left(during) == ["circuit_open", None]  # sent straight on: Seedancee2 saw no create of it
        assert during["provider"] == "mindvideo"
        assert (await _creates(running, "seedancee2"))["attempts"] == seen
        listed = await running.client.get(f"{running.url}/v1/providers", headers=running.headers)
        [health] = [p for p in listed.json()["data"] if p["provider"] == "seedancee2"]
        assert health["state"] == "open"

        [row] = [r for r in await running.store.provider_health() if r.provider == "seedancee2"]
        await asyncio.sleep(max(0.0, (row.open_until or 0.0) - time.time()) + 0.1)
        # The cool-down is over: the next create is the half-open probe, and it succeeds.
        after = await _finished(running, (await running.submit("sd2"))["id"])
        listed = await running.client.get(f"{running.url}/v1/providers", headers=running.headers)
    assert (after["status"], after["provider"], _left(after)) == ("succeeded", "seedancee2", [None])
    [health] = [p for p in listed.json()["data"] if p["provider"] == "seedancee2"]
    assert (health["state"], health["failures"]) == ("closed", 0)
