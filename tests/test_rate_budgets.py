"""Per-provider rate budgets (REELAY_<PROVIDER>_RATE_LIMIT) over real HTTP against the MindVideo emulator (it is
only polled): the emulator never counts more than the limit in a second, a 429 with Retry-After pauses every
status check to the provider, creates go before status checks, a job's first status check waits for its share of
the budget, and GET /v1/providers shows the budget, how far behind polling is and the interval it stretches to."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox import SandboxKnobs
from service.errors import ConfigError
from service.providers import ADAPTERS
from service.rates import IN_FLIGHT_SECONDS, RateBudgets, Shape
from service.settings import Settings
from service.wire import encode_job
from storage import create_store
from tests import pg
from tests.harness import Stack, stack

MODEL = "mindvideo/doubao-seedance-2-0-fast"
LONG = SandboxKnobs(processing_after_s=0.2, complete_after_s=600)


async def calls(running: Stack) -> dict[int, int]:
    counted = await running.sandbox("mindvideo", "GET", "/_sandbox/calls")
    return {int(second): count for second, count in counted["per_second"].items()}


async def providers(running: Stack) -> dict[str, dict[str, Any]]:
    response = await running.client.get(f"{running.url}/v1/providers", headers=running.headers)
    assert response.status_code == 200, response.text
    return {p["provider"]: p for p in response.json()["data"]}


def limited(limit: float, **overrides: Any) -> dict[str, Any]:
    return {"providers": ("mindvideo",), "provider_overrides": {"mindvideo": {"rate_limit": limit}}, **overrides}


def test_the_rate_limit_is_read_per_provider_and_checked() -> None:
    settings = Settings.from_env({"REELAY_MINDVIDEO_RATE_LIMIT": "12.5"}, adapters=ADAPTERS)
    assert settings.provider("mindvideo").rate_limit == 12.5
    assert settings.provider("imini").rate_limit is None  # unset: unlimited
    with pytest.raises(ConfigError, match="REELAY_IMINI_RATE_LIMIT must be positive"):
        Settings.from_env({"REELAY_IMINI_RATE_LIMIT": "-1"}, adapters=ADAPTERS)


async def test_a_budget_of_n_per_second_is_never_exceeded_at_the_emulator(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=LONG, dispatch_concurrency=16, poll_concurrency=32, **limited(10)) as running:
        jobs = [await running.submit(model=MODEL) for _ in range(40)]  # 40 creates, then ~30 status checks/s due
        await asyncio.sleep(8)
        seen = await calls(running)
        shown = (await providers(running))["mindvideo"]
    assert max(seen.values()) <= 10, seen
    assert sum(seen.values()) >= 50, seen  # the budget was used, not just respected
    assert shown["rate_limit"] == 10
    assert shown["polls_behind_seconds"] is not None
    assert shown["polls_behind_seconds"] > 0
    assert len(jobs) == 40


async def test_a_429_with_retry_after_pauses_every_poll_to_the_provider(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=LONG, poll_concurrency=32, **limited(50)) as running:
        jobs = [await running.submit(model=MODEL) for _ in range(30)]
        for job in jobs:
            await running.accepted(job["id"])
        await asyncio.sleep(1.5)  # status checks under way for every job
        knobs = {"processing_after_s": 0.2, "complete_after_s": 600, "burst_429": 1, "retry_after_s": 5}
        await running.sandbox("mindvideo", "PUT", "/_sandbox/knobs", json=knobs)
        asked = time.time()
        await asyncio.sleep(7.5)
        seen = await calls(running)
    first = int(asked)
    quiet = [second for second in range(first + 2, first + 5) if seen.get(second)]
    assert quiet == [], seen  # no call at all while the pause lasts, for any job
    assert sum(count for second, count in seen.items() if second >= first + 5) > 0, seen  # then polling resumes


@pytest.fixture(params=["sqlite", "postgresql"])
async def budgets_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        store = create_store(f"sqlite:///{tmp_path / 'rates.db'}", encode_job, clock=time.time)
        await store.open()
        yield store
        await store.close()
        return
    server: pg.PostgresServer = request.getfixturevalue("postgres_server")
    async with server.database() as url:
        store = create_store(url, encode_job, clock=time.time)
        await store.open()
        yield store
        await store.close()


async def test_creates_go_before_polls_when_the_budget_is_short(budgets_store: Any) -> None:
    budgets = RateBudgets({"mindvideo": 4.0}, budgets_store)  # a bucket of 2 tokens, ~2.7 a second
    polls, _ = await budgets.take("mindvideo", 10, create=False)
    assert polls == 1  # status checks leave the last token to a create
    assert (await budgets.take("mindvideo", 1, create=True))[0] == 1  # which finds it at once
    refused, wait = await budgets.take("mindvideo", 1, create=True)
    assert refused == 0
    assert 0 < wait <= 1 / budgets.shapes["mindvideo"].rate
    await asyncio.sleep(2 / budgets.shapes["mindvideo"].rate + 0.03)  # both tokens back, the create still waiting
    assert (await budgets.take("mindvideo", 10, create=False))[0] == 0  # a create is waiting: polls take nothing
    assert (await budgets.take("mindvideo", 1, create=True))[0] == 1


async def test_a_429_on_a_create_holds_every_other_create_for_its_retry_after(tmp_path: Path) -> None:
    knobs = SandboxKnobs(processing_after_s=0.2, complete_after_s=600, burst_429=1, retry_after_s=5)
    async with stack(tmp_path, knobs=knobs, **limited(50)) as running:
        await running.submit(model=MODEL)  # its create answers 429 with Retry-After: 5
        async with asyncio.timeout(5):
            while (await running.sandbox("mindvideo", "GET", "/_sandbox/creates"))["attempts"] < 1:
                await asyncio.sleep(0.02)
        refused_at = time.time()
        other = await running.submit(model=MODEL)
        await running.accepted(other["id"], timeout=10)
        waited = time.time() - refused_at
    assert waited >= 4.5  # not sent before the pause ends, though its own create never got a 429


async def test_a_first_poll_under_a_budget_waits_for_its_share_of_the_jobs_in_flight(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=LONG, **limited(10)) as running:
        for _ in range(20):
            await running.submit(model=MODEL)
        await asyncio.sleep(IN_FLIGHT_SECONDS)  # each process's count of the jobs in flight is read again by then
        job = await running.submit(model=MODEL)
        sent = time.time()
        await running.accepted(job["id"], timeout=10)
        stored = await running.store.get_job(job["id"])
        shown = (await providers(running))["mindvideo"]
    rate = Shape(10).rate  # about 8.2 a second
    assert stored is not None
    assert stored.next_poll_at is not None
    # 20 or 21 jobs in flight when counted: ~2.4 s at least, where the emulators' cadence alone says 0.5 s.
    assert stored.next_poll_at - sent >= 20 / rate
    assert shown["jobs_in_flight"] == 21
    assert shown["poll_interval_seconds"] == round(21 / rate, 1)  # longer than the cadence's 2 s cap
