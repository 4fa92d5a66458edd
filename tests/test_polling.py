"""The poller with an injected clock: its schedule, Retry-After, the per-provider cap and the deadline,
tested without sleeping."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from sandbox import SandboxKnobs
from service import lifecycle
from service.gateway import Gateway
from service.hub import EventHub
from service.lifecycle import Report
from service.loops import Poller
from service.metrics import Metrics
from service.providers.base import ModelSpec, TransientError
from service.rates import RateBudgets
from service.runtime import Runtime
from service.schedule import Backoff
from service.settings import Settings
from service.wire import encode_job
from storage import ApiKeyRecord, Stage, Store, create_store
from tests.clock import Clock
from tests.harness import stack

SCHEDULE = Backoff(initial=2.0, factor=1.5, cap=60.0, jitter=0.2)


class FakeProvider:
    """Answers status checks from a script; counts how many run at once."""

    name: ClassVar[str] = "fake"
    models: ClassVar[tuple[ModelSpec, ...]] = ()
    unknown_outcome: ClassVar[str] = "fail"
    signs_webhooks: ClassVar[bool] = False
    poll_schedule: ClassVar[Backoff] = SCHEDULE
    poll_concurrency: ClassVar[int] = 2

    def __init__(self, answers: list[Report | Exception]) -> None:
        self.answers = answers
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.latency = 0.0
        self.fetches = 0

    async def fetch(self, provider_task_id: str) -> Report:
        self.in_flight += 1
        self.fetches += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.latency)
            answer = self.answers.pop(0) if self.answers else Report(status="processing")
        finally:
            self.in_flight -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    the_store = create_store(
        f"sqlite:///{tmp_path / 'poll.db'}", encode_job, clock=time.time, sqlite_synchronous="NORMAL"
    )
    await the_store.open()
    yield the_store
    await the_store.close()


async def _submitted_job(store: Store, clock: Clock, job_id: str = "job_01JZ0000000000000000000001") -> Any:
    if await store.get_api_key("k") is None:
        await store.create_api_key(ApiKeyRecord(id="k", name="k", secret_hash=b"x", created_at="2026-01-01T00:00:00Z"))
    job = lifecycle.new_job(
        job_id=job_id,
        api_key_id="k",
        model="fake/m",
        provider="fake",
        input={"prompt": "p"},
        metadata={},
        cost={},
        callback_token="t",
        now=clock.now,
        timeout=600,
    )
    await store.create_job(job, "job.created")
    outcome = await store.update_job(
        job.id,
        lambda j: lifecycle.submitted(
            j, provider_task_id=f"task-{job_id[-4:]}", cost=None, now=clock.now, next_poll_at=clock.now
        ),
    )
    return outcome.job


async def _poll(poller: Poller, store: Store, clock: Clock) -> None:
    """Claim the job due at the clock's time, as the worker would, poll it, and let the poller write what it has."""
    (job,) = await store.claim_polls(clock.now, limit=1, lease_seconds=30.0)
    await poller.handle(job)
    await poller.drain(0)


def _poller(
    store: Store, clock: Clock, provider: FakeProvider, seed: int = 3, rates: RateBudgets | None = None
) -> Poller:
    runtime = Runtime(
        settings=Settings(),
        store=store,
        adapters={"fake": provider},  # type: ignore[dict-item]
        models={},
        http=httpx.AsyncClient(),
        hub=EventHub(),
        clock=clock,
        monotonic=clock,
        rng=random.Random(seed),
        metrics=Metrics.create(),
        rates=rates,
    )
    return Poller(runtime, Gateway(runtime))


async def test_schedule_backs_off_with_jitter_until_the_job_finishes(store: Store) -> None:
    clock = Clock()
    provider = FakeProvider([Report(status="queued"), Report(status="processing"), Report(status="processing")])
    poller = _poller(store, clock, provider)
    expected_rng = random.Random(3)
    job = await _submitted_job(store, clock)
    for attempt in range(3):
        await _poll(poller, store, clock)
        job = await store.get_job(job.id)
        assert job is not None
        expected = SCHEDULE.delay(attempt, expected_rng)
        assert job.next_poll_at == pytest.approx(clock.now + expected)
        assert job.poll_attempts == attempt + 1
        assert job.lease_until is None
        clock.now = job.next_poll_at  # the worker would claim it exactly then
    assert job.status == "processing"
    provider.answers = [Report(status="succeeded", output={"videos": [{"url": "u"}]})]
    await _poll(poller, store, clock)
    done = await store.get_job(job.id)
    assert done is not None
    assert (done.status, done.stage, done.next_poll_at) == ("succeeded", Stage.TERMINAL, None)


async def test_delays_grow_then_stop_at_the_cap() -> None:
    rng = random.Random(0)
    delays = [SCHEDULE.delay(n, rng) for n in range(20)]
    assert 1.6 <= delays[0] <= 2.4
    assert all(d <= 60.0 * 1.2 for d in delays)
    assert min(delays[12:]) >= 60.0 * 0.8  # capped, still jittered


async def test_retry_after_on_429_is_honoured(store: Store) -> None:
    clock = Clock()
    poller = _poller(store, clock, FakeProvider([TransientError("429", retry_after=45.0)]))
    job = await _submitted_job(store, clock)
    await _poll(poller, store, clock)
    after = await store.get_job(job.id)
    assert after is not None
    assert after.next_poll_at == pytest.approx(clock.now + 45.0)
    assert after.status == "queued"


async def test_job_past_its_deadline_fails_with_timeout(store: Store) -> None:
    clock = Clock()
    poller = _poller(store, clock, FakeProvider([]))
    job = await _submitted_job(store, clock)
    clock.now = job.deadline_at + 1
    await _poll(poller, store, clock)
    after = await store.get_job(job.id)
    assert after is not None
    assert after.status == "failed"
    assert after.error == {"code": "timeout", "message": "the provider did not finish the job before its deadline"}


async def test_next_poll_never_lands_after_the_deadline(store: Store) -> None:
    clock = Clock()
    poller = _poller(store, clock, FakeProvider([TransientError("429", retry_after=3600.0)]))
    job = await _submitted_job(store, clock)
    await _poll(poller, store, clock)
    after = await store.get_job(job.id)
    assert after is not None
    assert after.next_poll_at == job.deadline_at


async def test_per_provider_cap_limits_status_checks_in_flight(store: Store) -> None:
    clock = Clock()
    provider = FakeProvider([])
    provider.gate = asyncio.Event()
    poller = _poller(store, clock, provider)
    submitted = [await _submitted_job(store, clock, f"job_01JZ00000000000000000000{i:02d}") for i in range(6)]
    tasks = [asyncio.create_task(poller.handle(job)) for job in submitted]
    for _ in range(20):
        await asyncio.sleep(0)
    assert provider.in_flight == FakeProvider.poll_concurrency
    provider.gate.set()
    await asyncio.gather(*tasks)
    assert provider.most_in_flight == FakeProvider.poll_concurrency


class CountingStore:
    """The real store, counting the job writes that go through it (one transaction each, or one per batch)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.updates = 0
        self.batches: list[int] = []
        self.claims: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim_polls(self, *args: Any, **kwargs: Any) -> Any:
        claimed = await self._store.claim_polls(*args, **kwargs)
        self.claims.append(len(claimed))
        return claimed

    async def update_job(self, *args: Any, **kwargs: Any) -> Any:
        self.updates += 1
        return await self._store.update_job(*args, **kwargs)

    async def reschedule_polls(self, items: Any) -> int:
        self.batches.append(len(items))
        return await self._store.reschedule_polls(items)


async def test_unchanged_polls_share_one_write_and_take_no_transaction_each(store: Store) -> None:
    clock = Clock()
    for i in range(6):
        await _submitted_job(store, clock, f"job_01JZ00000000000000000000{i:02d}")
    counting = CountingStore(store)
    # Each job is queued at the provider already: the same answer again changes nothing.
    poller = _poller(counting, clock, FakeProvider([Report(status="queued")] * 6))  # type: ignore[arg-type]
    claimed = await store.claim_polls(clock.now, limit=10, lease_seconds=30.0)
    await asyncio.gather(*(poller.handle(job) for job in claimed))
    await poller.drain(0)
    assert (counting.updates, counting.batches) == (0, [6])
    for job in claimed:
        after = await store.get_job(job.id)
        assert after is not None
        assert (after.poll_attempts, after.lease_until, after.status) == (1, None, "queued")
        assert (after.next_poll_at or 0) > clock.now


async def test_a_job_cancelled_while_its_unchanged_poll_runs_stays_cancelled_and_unleased(store: Store) -> None:
    clock = Clock()
    provider = FakeProvider([Report(status="queued")])
    provider.gate = asyncio.Event()
    poller = _poller(store, clock, provider)
    job = await _submitted_job(store, clock)
    (claimed,) = await store.claim_polls(clock.now, limit=1, lease_seconds=30.0)
    polling = asyncio.create_task(poller.handle(claimed))
    while not provider.in_flight:
        await asyncio.sleep(0)
    await store.update_job(job.id, lambda j: lifecycle.cancelled(j, now=clock.now))
    provider.gate.set()
    await polling
    await poller.drain(0)
    after = await store.get_job(job.id)
    assert after is not None
    assert (after.status, after.stage, after.poll_attempts) == ("cancelled", Stage.TERMINAL, 0)


async def test_first_poll_follows_the_provider_cadence_unless_a_callback_is_awaited(tmp_path: Path) -> None:
    cadence = Backoff(initial=30.0, factor=1.5, cap=60.0, jitter=0.2)
    async with stack(
        tmp_path,
        providers=("imini", "seedancee2"),
        knobs=SandboxKnobs(processing_after_s=60, complete_after_s=120),
        provider_overrides={"imini": {"poll_schedule": cadence}},  # seedancee2 keeps the emulators' 0.5 s
        callback_grace_seconds=50.0,
    ) as running:
        polled = await running.submit(model="imini/doubao/seedance-2.0")
        called_back = await running.submit(model="seedancee2/pro")
        sent = time.time()
        await running.accepted(polled["id"])
        await running.accepted(called_back["id"])
        first_polls = {job_id: (await running.store.get_job(job_id)) for job_id in (polled["id"], called_back["id"])}
    imini_job, seedancee2_job = first_polls.values()
    assert imini_job is not None
    assert seedancee2_job is not None
    assert 24.0 - 1 <= (imini_job.next_poll_at or 0) - sent <= 36.0 + 1  # poll-only: at the provider's first delay
    assert 50.0 - 1 <= (seedancee2_job.next_poll_at or 0) - sent <= 50.0 + 1  # callbacks: once one is overdue


async def test_a_busy_poller_leases_several_jobs_per_claim_not_one_per_freed_slot(store: Store) -> None:
    clock = Clock()
    for i in range(40):
        await _submitted_job(store, clock, f"job_01JZ00000000000000000000{i:02d}")
    counting = CountingStore(store)
    provider = FakeProvider([Report(status="queued")] * 40)
    provider.latency = 0.002  # answers come back one by one, each freeing one slot
    poller = _poller(counting, clock, provider)  # type: ignore[arg-type]
    running = asyncio.create_task(poller.run())
    async with asyncio.timeout(10):
        while provider.fetches < 40 or provider.in_flight:
            await asyncio.sleep(0.01)
    running.cancel()
    await poller.drain(0)
    taken = [n for n in counting.claims if n]
    assert sum(taken) == 40
    assert len(taken) <= 40 // 4  # four jobs or more per claim (a write) on average, not the two slots freed


class EagerProvider(FakeProvider):
    """Wants each job checked every 0.5 s: far more often than a small budget allows for 40 jobs."""

    poll_schedule: ClassVar[Backoff] = Backoff(initial=0.5, factor=1.0, cap=0.5, jitter=0.2)
    poll_concurrency: ClassVar[int] = 4

    def __init__(self, clock: Clock) -> None:
        super().__init__([])
        self.clock = clock
        self.polled: dict[str, list[float]] = {}

    async def fetch(self, provider_task_id: str) -> Report:
        self.polled.setdefault(provider_task_id, []).append(self.clock.now)
        return await super().fetch(provider_task_id)


async def test_polls_under_a_budget_are_spaced_by_jobs_in_flight_over_its_rate_and_none_falls_far_behind(
    store: Store,
) -> None:
    clock = Clock()
    jobs = 40
    for i in range(jobs):
        await _submitted_job(store, clock, f"job_01JZ00000000000000000000{i:02d}")  # every one due now
    provider = EagerProvider(clock)
    rates = RateBudgets({"fake": 10.0}, store, monotonic=clock)  # about 8.2 checks a second
    poller = _poller(store, clock, provider, rates=rates)
    spacing = jobs / rates.shapes["fake"].rate  # about 4.9 s, where the cadence asks for 0.5 s
    behind = []
    began = clock.now
    while clock.now < began + 60:  # as the worker's loop would: again after 0.1 s, or once a token is back
        clock.now += 0.1 if poller.soon is None else min(0.1, poller.soon)
        poller.soon = None
        for job in await poller.claim(clock.now, 16):
            await poller.handle(job)
        await poller.drain(0)
        oldest = (await store.oldest_due_polls(["fake"])).get("fake")
        behind.append((clock.now - began, max(0.0, clock.now - oldest) if oldest is not None else 0.0))
    gaps = [later - earlier for times in provider.polled.values() for earlier, later in itertools.pairwise(times)]
    assert len(provider.polled) == jobs
    assert min(gaps) >= spacing  # each job's turn comes at its share of the budget, not at the cadence's 0.5 s
    assert min(len(times) for times in provider.polled.values()) >= 9  # ... and it does come: the budget is used
    assert max(late for _, late in behind) <= spacing + 0.5  # the first round: 40 checks due at once
    # Then they come due about as fast as the budget serves them; at the cadence's 0.5 s, each would be ~4.4 s late.
    assert max(late for at, late in behind if at >= 30) <= 1.0
