"""Provider circuits over real HTTP against the emulators: failed creates open a provider's circuit, jobs wait
queued (never failed for it) while it is open, a half-open probe closes or re-opens it, the state outlives a
restart, and GET /v1/providers and /metrics show it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxKnobs
from storage import JobRecord
from storage.health import CLOSED, OPEN, ProviderHealthRecord
from tests.harness import Stack, stack

QUICK = {"processing_after_s": 0.05, "complete_after_s": 0.2}


async def circuit(running: Stack) -> ProviderHealthRecord | None:
    return next(iter(await running.store.provider_health()), None)


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll an async check until it returns something truthy, and return that."""
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.02)
    return found


async def opened(running: Stack) -> ProviderHealthRecord:
    async def is_open() -> ProviderHealthRecord | None:
        row = await circuit(running)
        return row if row is not None and row.state == OPEN else None

    found: ProviderHealthRecord = await until(is_open)
    return found


def cooldown(row: ProviderHealthRecord) -> float:
    return (row.open_until or 0.0) - (row.opened_at or 0.0)


async def providers(running: Stack) -> dict[str, dict[str, Any]]:
    response = await running.client.get(f"{running.url}/v1/providers", headers=running.headers)
    assert response.status_code == 200, response.text
    return {p["provider"]: p for p in response.json()["data"]}


async def test_failed_creates_open_the_circuit_and_a_waiting_job_goes_out_after_the_probe(tmp_path: Path) -> None:
    knobs = SandboxKnobs(burst_5xx=3, **QUICK)
    async with stack(tmp_path, knobs=knobs, circuit_failures=3, circuit_cooldown_seconds=1.0) as running:
        first = [await running.submit() for _ in range(3)]  # each create answers 500 once
        row = await opened(running)
        assert (row.failures, row.last_error_at is not None) == (3, True)
        assert "500" in (row.last_error or "")

        waiting = await running.submit()

        async def put_back() -> JobRecord | None:
            job = await running.store.get_job(waiting["id"])
            return job if job is not None and job.next_attempt_at == row.open_until else None

        held = await until(put_back)  # the dispatcher took it, found the circuit open, and queued it again
        assert (held.status, held.dispatch_attempts) == ("queued", 0)
        assert (await running.sandbox("seedancee2", "GET", "/_sandbox/creates"))["attempts"] == 3
        assert (await providers(running))["seedancee2"]["state"] == "open"

        for job in [*first, waiting]:
            done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
            assert done["status"] == "succeeded"
        assert (await running.store.get_job(waiting["id"])).dispatch_attempts == 1  # type: ignore[union-attr]
        creates = await running.sandbox("seedancee2", "GET", "/_sandbox/creates")
        assert (creates["attempts"], len(creates["accepted"])) == (7, 4)
        closed = await circuit(running)
        assert closed is not None
        assert (closed.state, closed.failures) == (CLOSED, 0)


async def test_a_failed_probe_reopens_the_circuit_for_twice_the_cooldown(tmp_path: Path) -> None:
    knobs = SandboxKnobs(burst_5xx=1000, **QUICK)
    settings = {"circuit_failures": 2, "circuit_cooldown_seconds": 0.5, "circuit_max_cooldown_seconds": 10.0}
    async with stack(tmp_path, knobs=knobs, **settings) as running:
        jobs = [await running.submit() for _ in range(2)]
        row = await opened(running)
        assert cooldown(row) == pytest.approx(0.5)

        async def reopened() -> ProviderHealthRecord | None:
            again = await circuit(running)
            return again if again is not None and again.state == OPEN and again.opened_at != row.opened_at else None

        again = await until(reopened)
        assert cooldown(again) == pytest.approx(1.0)
        assert again.failures == 3
        for job in jobs:
            assert (await running.job(job["id"]))["status"] == "queued"  # waiting, never failed for the circuit

        async def shown() -> str | None:  # the gauge is set once the write that reopened the circuit returns
            text = (await running.client.get(f"{running.url}/metrics")).text
            return text if 'reelay_provider_circuit_state{provider="seedancee2"} 2.0' in text else None

        metrics = await until(shown)
        assert 'reelay_provider_create_errors_total{provider="seedancee2"} 3.0' in metrics


async def test_an_open_circuit_survives_a_restart(tmp_path: Path) -> None:
    knobs = SandboxKnobs(burst_5xx=1000, **QUICK)
    settings = {"circuit_failures": 1, "circuit_cooldown_seconds": 60.0}
    async with stack(tmp_path, knobs=knobs, **settings) as running:
        await running.submit()
        row = await opened(running)
    async with stack(tmp_path, knobs=SandboxKnobs(**QUICK), **settings) as restarted:
        shown = (await providers(restarted))["seedancee2"]
        assert (shown["state"], shown["failures"]) == ("open", 1)
        assert shown["open_until"] is not None
        assert await circuit(restarted) == row
        job = await restarted.submit()

        async def held() -> bool:
            found = await restarted.store.get_job(job["id"])
            return found is not None and found.next_attempt_at == row.open_until

        await until(held)  # waits for the cool-down the first run started: nothing goes to the provider
        assert (await restarted.sandbox("seedancee2", "GET", "/_sandbox/creates"))["attempts"] == 0


async def test_get_providers_shows_each_providers_health_and_jobs_in_flight(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SandboxKnobs(processing_after_s=0.05, complete_after_s=60)) as running:
        before = await providers(running)
        assert before["seedancee2"] == {
            "provider": "seedancee2",
            "configured": True,
            "state": "closed",
            "failures": 0,
            "open_until": None,
            "last_error": None,
            "last_error_at": None,
            "error_rate": None,
            "create_latency_ms": {"p50": None, "p99": None},
            "jobs_in_flight": 0,
            "rate_limit": None,
            "polls_behind_seconds": None,
            "poll_interval_seconds": 2.0,  # the emulators' cadence's cap: no budget to stretch it
        }
        assert before["minuit"]["configured"] is False
        assert before["minuit"]["poll_interval_seconds"] is None
        assert set(before) == {"seedancee2", "minuit", "mindvideo", "imini", "magnific"}

        job = await running.submit()
        await running.accepted(job["id"])
        after = (await providers(running))["seedancee2"]
        assert (after["jobs_in_flight"], after["error_rate"], after["state"]) == (1, 0.0, "closed")
        assert 0 < after["create_latency_ms"]["p50"] <= after["create_latency_ms"]["p99"]

        anonymous = await running.client.get(f"{running.url}/v1/providers")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        unknown = await running.client.get(f"{running.url}/v1/providers?state=open", headers=running.headers)
        assert unknown.status_code == 400
        schema = (await running.client.get(f"{running.url}/schema")).json()
        assert "/v1/providers" in schema["paths"]


async def test_a_probe_that_sends_no_create_gives_the_circuit_back_at_once(tmp_path: Path) -> None:
    # The first create's answer is lost (its task exists): that opens the circuit. After the cool-down the job's
    # retry wins the probe but adopts its task by lookup, sending no create: the probe must not stay held for its
    # lease (upstream timeout + 5 s), or every other job of the provider waits that long.
    knobs = SandboxKnobs(hang_s=2.0, processing_after_s=60, complete_after_s=120)  # no callback adopts it first
    settings = {"circuit_failures": 1, "circuit_cooldown_seconds": 0.2, "upstream_timeout_seconds": 0.5}
    async with stack(tmp_path, knobs=knobs, **settings) as running:
        lost = await running.submit()
        await opened(running)
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={"hang_s": 0})
        adopted = await running.store.get_job((await running.accepted(lost["id"]))["id"])
        assert adopted is not None
        assert (adopted.dispatch_attempts, adopted.attempts[-1].get("answer_lost")) == (1, True)  # found, not resent

        async def given_back() -> ProviderHealthRecord | None:
            row = await circuit(running)
            return row if row is not None and row.probe_owner is None else None

        row = await until(given_back, timeout=3.0)  # well inside the 5.5 s lease
        assert row.state == OPEN  # its cool-down is over: the next create is the probe
        after = await running.submit()
        await running.accepted(after["id"])
        closed = await circuit(running)
        assert closed is not None
        assert (closed.state, closed.failures) == (CLOSED, 0)
