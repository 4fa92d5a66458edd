"""Job deadlines: `deadline_seconds` and `Cancel-After` on create, over real HTTP against the emulators. A job not
finished by its deadline fails with `timeout` at the deadline, whatever it was waiting for."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from sandbox import SandboxKnobs
from service.gateway import idempotency_hash
from service.wire import JobCreate
from tests.harness import Stack, stack

SLOW = SandboxKnobs(processing_after_s=0.1, complete_after_s=60)  # a task that outlives every deadline here
QUICK = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2)
SEEDANCE = "seedancee2/pro"  # answers by callback; polled only as a safety net
IMINI = "imini/doubao/seedance-2.0"  # no callbacks: polled, first after 1.6-2.4 s
MINDVIDEO = "mindvideo/doubao-seedance-2-0-fast"  # no callbacks: polled, first after 0.8-1.2 s


def _body(model: str = SEEDANCE, deadline: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": {"prompt": "waves on black rocks", "duration": 5}, **extra}
    if deadline is not None:
        body["deadline_seconds"] = deadline
    return body


async def _post(running: Stack, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await running.client.post(f"{running.url}/v1/jobs", json=body, headers={**running.headers, **headers})


async def _created(running: Stack, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await _post(running, body, **headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def _seconds(job: dict[str, Any]) -> float:
    """How long the job ran, by the server's own stamps."""
    return (datetime.fromisoformat(job["completed_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


async def _timed_out(running: Stack, job_id: str) -> dict[str, Any]:
    done = await running.wait_for(job_id, {"succeeded", "failed", "cancelled"}, timeout=10)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "timeout", done
    [*_, last] = await running.store.events_after(0, job_id=job_id)
    assert last.type == "job.failed"
    assert msgspec.json.decode(last.job)["error"]["code"] == "timeout"
    return done


@pytest.mark.parametrize(("provider", "model"), [("seedancee2", SEEDANCE), ("imini", IMINI)])
async def test_a_submitted_job_fails_with_timeout_at_its_deadline_not_at_its_next_poll(
    tmp_path: Path, provider: str, model: str
) -> None:
    async with stack(tmp_path, providers=(provider,), knobs=SLOW) as running:
        job = await _created(running, _body(model, deadline=1))
        accepted = await running.accepted(job["id"])
        # Uncapped, the next check would be the callback grace (120 s) or imini's first poll (1.6-2.4 s) away.
        record = await running.store.get_job(job["id"])
        assert record is not None
        assert record.next_poll_at is not None
        assert record.next_poll_at <= record.deadline_at
        done = await _timed_out(running, job["id"])
    assert done["provider_task_id"] == accepted["provider_task_id"]  # it failed waiting on the provider
    assert 1.0 <= _seconds(done) < 2.5


async def test_cancel_after_header_sets_the_deadline(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as running:
        job = await _created(running, _body(), **{"Cancel-After": "1"})
        done = await _timed_out(running, job["id"])
    assert 1.0 <= _seconds(done) < 2.5


@pytest.mark.parametrize(("body_seconds", "header", "expected"), [(30, "2", 2), (2, "30", 2), (None, "07", 7)])
async def test_with_both_the_smaller_deadline_wins(
    tmp_path: Path, body_seconds: int | None, header: str, expected: int
) -> None:
    async with stack(tmp_path, knobs=SLOW) as running:
        job = await _created(running, _body(deadline=body_seconds), **{"Cancel-After": header})
        record = await running.store.get_job(job["id"])
    assert record is not None
    created = datetime.fromisoformat(record.created_at).timestamp()
    assert record.deadline_at == pytest.approx(created + expected, abs=0.01)


async def test_a_job_without_a_deadline_gets_the_operators_timeout(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, job_timeout_seconds=90) as running:
        job = await _created(running, _body())
        record = await running.store.get_job(job["id"])
    assert record is not None
    assert record.deadline_at == pytest.approx(datetime.fromisoformat(record.created_at).timestamp() + 90, abs=0.01)


async def test_a_create_retried_past_the_deadline_fails_with_timeout_at_the_deadline(tmp_path: Path) -> None:
    # Every create answers 500: the job waits in the dispatch queue for its next try, capped at the deadline.
    async with stack(tmp_path, knobs=SandboxKnobs(burst_5xx=1000)) as running:
        job = await _created(running, _body(deadline=1))
        done = await _timed_out(running, job["id"])
    assert done["provider_task_id"] is None
    assert 1.0 <= _seconds(done) < 2.5


async def test_a_create_still_unanswered_at_the_deadline_fails_the_job_then(tmp_path: Path) -> None:
    # The emulator answers every call after 5 s: without the cut the job would fail when the create answered.
    async with stack(tmp_path, knobs=SandboxKnobs(latency_s=5, complete_after_s=60)) as running:
        job = await _created(running, _body(deadline=1))
        done = await _timed_out(running, job["id"])
    assert "not answered the create" in done["error"]["message"]
    assert 1.0 <= _seconds(done) < 2.5


class SlowStatusChecks(httpx.AsyncHTTPTransport):
    """Holds every status check (a GET under `path`) for a minute, as a provider that stopped answering would."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.startswith(self.path):
            self.held += 1
            await asyncio.sleep(60)
        return await super().handle_async_request(request)


async def test_a_status_check_still_unanswered_at_the_deadline_fails_the_job_then(tmp_path: Path) -> None:
    transport = SlowStatusChecks("/api/v1/tasks/")
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(tmp_path, providers=("mindvideo",), knobs=SLOW, http_client=client) as running,
    ):
        job = await _created(running, _body(MINDVIDEO, deadline=2))
        done = await _timed_out(running, job["id"])
    assert transport.held >= 1  # the first poll (at about 1 s) was in flight at the deadline
    assert 2.0 <= _seconds(done) < 3.5


@pytest.mark.parametrize("headers", [{}, {"Cancel-After": "10"}])
async def test_a_job_that_finishes_before_its_deadline_succeeds(tmp_path: Path, headers: dict[str, str]) -> None:
    async with stack(tmp_path, knobs=QUICK) as running:
        job = await _created(running, _body(deadline=10), **headers)
        done = await running.wait_for(job["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded"
    assert done["error"] is None


# -- bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 3601, 10**30, 1.5, "5", True])
async def test_a_bad_deadline_seconds_is_a_400_naming_the_field_and_the_bound(tmp_path: Path, value: Any) -> None:
    async with stack(tmp_path, knobs=QUICK, job_timeout_seconds=3600) as running:
        response = await _post(running, _body(deadline=value))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"]["field"] == "deadline_seconds"
    assert error["message"].startswith("deadline_seconds: ")
    if isinstance(value, int) and not isinstance(value, bool) and value < 10**20:
        assert error["message"] == "deadline_seconds: must be a whole number of seconds from 1 to 3600"
        assert error["details"] == {"field": "deadline_seconds", "min": 1, "max": 3600}


@pytest.mark.parametrize("value", ["", "0", "-1", "+5", "1.5", "5m", "abc", "3601", "9" * 40, "1 2"])
async def test_a_bad_cancel_after_is_a_400_naming_the_header_and_the_bound(tmp_path: Path, value: str) -> None:
    async with stack(tmp_path, knobs=QUICK, job_timeout_seconds=3600) as running:
        response = await _post(running, _body(), **{"Cancel-After": value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "Cancel-After: must be a whole number of seconds from 1 to 3600"
    assert error["details"] == {"field": "Cancel-After", "min": 1, "max": 3600}


async def test_the_bound_is_the_operators_job_timeout(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=QUICK, job_timeout_seconds=30) as running:
        over = await _post(running, _body(deadline=31))
        at = await _post(running, _body(deadline=30))
        header_over = await _post(running, _body(), **{"Cancel-After": "31"})
    assert over.status_code == 400
    assert over.json()["error"]["details"]["max"] == 30
    assert at.status_code == 202, at.text
    assert header_over.status_code == 400
    assert header_over.json()["error"]["details"] == {"field": "Cancel-After", "min": 1, "max": 30}


# -- idempotency ------------------------------------------------------------------------------------------------


async def test_an_idempotent_replay_with_another_deadline_is_a_409(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=QUICK) as running:
        first = await _created(running, _body(deadline=60), **{"Idempotency-Key": "k1", "Cancel-After": "30"})
        same = await _post(running, _body(deadline=60), **{"Idempotency-Key": "k1", "Cancel-After": "30"})
        other_body = await _post(running, _body(deadline=61), **{"Idempotency-Key": "k1", "Cancel-After": "30"})
        other_header = await _post(running, _body(deadline=60), **{"Idempotency-Key": "k1", "Cancel-After": "31"})
        no_header = await _post(running, _body(deadline=60), **{"Idempotency-Key": "k1"})
        no_deadline = await _post(running, _body(), **{"Idempotency-Key": "k1", "Cancel-After": "30"})
    assert same.status_code == 200, same.text
    assert same.json()["id"] == first["id"]
    for response in (other_body, other_header, no_header, no_deadline):
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "idempotency_conflict"
        assert response.json()["error"]["details"] == {"job_id": first["id"]}


def test_a_request_without_a_deadline_hashes_as_before_so_held_keys_still_match() -> None:
    # Digests of these bodies taken before `deadline_seconds` existed (sha256 of the struct's JSON).
    full = (
        b'{"model":"seedancee2/pro","input":{"prompt":"waves","duration":5,"provider_options":{"x":1.5}},'
        b'"metadata":{"a":"b"},"webhook_url":null}'
    )
    bare = b'{"model":"seedancee2/pro","input":{"prompt":"waves"}}'
    assert (
        idempotency_hash(msgspec.json.decode(full, type=JobCreate), None)
        == "cf9ac73ec26639b412a7798a9ba588e54ce19abfcabf45ccba43f96662d4148a"
    )
    assert (
        idempotency_hash(msgspec.json.decode(bare, type=JobCreate), None)
        == "3e4c95b92197980f07445ff5aba65b83dfe5e7b570390ba68e532b2d155016f8"
    )


async def test_openapi_documents_deadline_seconds_and_the_cancel_after_header(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=QUICK) as running:
        schema = (await running.client.get(f"{running.url}/schema/openapi.json")).json()
    create = schema["paths"]["/v1/jobs"]["post"]
    [header] = [p for p in create["parameters"] if p["name"] == "Cancel-After"]
    assert header["in"] == "header"
    assert header["schema"]["pattern"] == "^[0-9]+$"
    assert "timeout" in header["description"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    field = schema["components"]["schemas"][ref]["properties"]["deadline_seconds"]
    assert field["minimum"] == 1
    assert {"type": "integer"} in field["oneOf"]
    assert "Cancel-After" in field["description"]
