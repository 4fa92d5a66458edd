"""`Circuits` over a real store: its in-memory copy (a closed circuit admits without a query), one probe among
processes, waking the dispatcher on a close, and the recent create statistics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.circuits import Circuits
from service.metrics import Metrics
from service.wire import encode_job
from storage import Store, create_store
from storage.health import CircuitPolicy
from tests.clock import Clock

NOW = 1_750_000_000.0
POLICY = CircuitPolicy(threshold=2, cooldown=30.0, max_cooldown=600.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = create_store(f"sqlite:///{tmp_path / 'reelay.db'}", encode_job, clock=lambda: NOW)
    await opened.open()
    yield opened
    await opened.close()


def circuits(store: Store, monotonic: Clock, wake: asyncio.Event | None = None) -> Circuits:
    """One process's circuits (each call is another process: another owner)."""
    event = wake or asyncio.Event()
    return Circuits(
        store, POLICY, probe_lease_seconds=35.0, wake=event.set, metrics=Metrics.create(), monotonic=monotonic
    )


async def fail(process: Circuits, times: int, now: float = NOW) -> None:
    for _ in range(times):
        await process.record("seedancee2", ok=False, counts=True, latency=0.1, error="HTTP 500", now=now)


async def test_a_closed_circuit_admits_from_memory_until_its_copy_is_half_a_second_old(store: Store) -> None:
    monotonic = Clock(100.0)
    here, there = circuits(store, monotonic), circuits(store, monotonic)
    assert (await here.admit("seedancee2", NOW)).allowed  # reads the circuits once
    await fail(there, 2)  # another process opens the circuit
    monotonic.now += 0.4
    assert (await here.admit("seedancee2", NOW)).allowed  # no query: the copy is recent enough
    monotonic.now += 0.1
    refused = await here.admit("seedancee2", NOW)
    assert (refused.allowed, refused.retry_at) == (False, NOW + 30)


async def test_one_process_gets_the_probe_and_the_others_ask_again_soon(store: Store) -> None:
    monotonic = Clock(100.0)
    first, second = circuits(store, monotonic), circuits(store, monotonic)
    await fail(first, 2)
    later = NOW + 30
    answers = await asyncio.gather(first.admit("seedancee2", later), second.admit("seedancee2", later))
    assert sorted(a.probe for a in answers) == [False, True]
    waiting = next(a for a in answers if not a.probe)
    assert not waiting.allowed
    assert waiting.retry_at is not None
    assert later < waiting.retry_at <= later + 1.0
    # The prober itself lets no second create through while its probe is out.
    prober = first if answers[0].probe else second
    assert not (await prober.admit("seedancee2", later)).allowed


async def test_the_probe_that_closes_the_circuit_wakes_the_dispatcher(store: Store) -> None:
    monotonic = Clock(100.0)
    woken = asyncio.Event()
    process = circuits(store, monotonic, woken)
    await fail(process, 2)
    assert not woken.is_set()
    assert (await process.admit("seedancee2", NOW + 30)).probe
    await process.record("seedancee2", ok=True, counts=False, latency=0.2, error=None, now=NOW + 31)
    assert woken.is_set()
    assert (await process.admit("seedancee2", NOW + 31)).allowed


async def test_a_refusal_of_the_input_does_not_count(store: Store) -> None:
    process = circuits(store, Clock(100.0))
    for _ in range(3):
        await process.record("seedancee2", ok=False, counts=False, latency=0.1, error="HTTP 400", now=NOW)
    assert await store.provider_health() == []
    assert (await process.admit("seedancee2", NOW)).allowed


async def test_recording_never_raises_when_the_database_is_gone(store: Store) -> None:
    process = circuits(store, Clock(100.0))
    await store.close()
    await fail(process, 1)  # logged; the create's own outcome must not be hidden by bookkeeping
    assert (await process.admit("seedancee2", NOW)).allowed  # decides on its last copy (none: closed)


async def test_the_view_shows_this_processes_error_rate_and_latency_quantiles(store: Store) -> None:
    process = circuits(store, Clock(100.0))
    await process.record("seedancee2", ok=True, counts=False, latency=9.0, error=None, now=NOW - 301)  # too old
    for latency in (0.1, 0.2, 0.3, 0.4):
        await process.record("seedancee2", ok=True, counts=False, latency=latency, error=None, now=NOW)
    await process.record("seedancee2", ok=False, counts=True, latency=5.0, error="timed out", now=NOW)
    view = (await process.view(NOW))["seedancee2"]
    assert (view.error_rate, view.latency_p50, view.latency_p99) == (0.2, 0.3, 5.0)
    assert (view.state, view.failures, view.last_error, view.last_error_at) == ("closed", 1, "timed out", NOW)
