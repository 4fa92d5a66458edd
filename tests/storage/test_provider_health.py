"""Provider circuits in storage, on every backend: counting, opening, the probe and its lease; and, on PostgreSQL,
two replicas sharing one circuit."""

from __future__ import annotations

import asyncio

import pytest

from storage import Stage, Store
from storage.health import CLOSED, HALF_OPEN, OPEN, CircuitPolicy
from tests.storage.conftest import Backend
from tests.storage.test_contract import create

NOW = 1_750_000_000.0
POLICY = CircuitPolicy(threshold=3, cooldown=30.0, max_cooldown=100.0)


async def fail(store: Store, times: int, *, at: float = NOW, owner: str = "a") -> None:
    for _ in range(times):
        await store.record_provider_outcome(
            "seedancee2", failed=True, owner=owner, error="HTTP 500", now=at, policy=POLICY
        )


async def test_no_row_until_a_failure_is_counted(store: Store) -> None:
    assert await store.provider_health() == []


async def test_consecutive_failures_open_the_circuit_at_the_threshold(store: Store) -> None:
    await fail(store, 2)
    row = await store.record_provider_outcome("seedancee2", failed=False, owner="a", error=None, now=NOW, policy=POLICY)
    assert (row.state, row.failures) == (CLOSED, 0)  # a success in between restarts the count
    await fail(store, 2)
    assert [(r.state, r.failures) for r in await store.provider_health()] == [(CLOSED, 2)]
    await fail(store, 1, at=NOW + 1)
    [row] = await store.provider_health()
    assert (row.state, row.failures, row.open_until) == (OPEN, 3, NOW + 31)
    assert (row.last_error, row.last_error_at) == ("HTTP 500", NOW + 1)


async def test_the_probe_is_taken_once_after_the_cooldown_and_retaken_after_its_lease(store: Store) -> None:
    await fail(store, 3)
    assert not await store.claim_provider_probe("seedancee2", owner="a", now=NOW + 29, lease_seconds=10)
    assert await store.claim_provider_probe("seedancee2", owner="a", now=NOW + 30, lease_seconds=10)
    assert not await store.claim_provider_probe("seedancee2", owner="b", now=NOW + 31, lease_seconds=10)
    [row] = await store.provider_health()
    assert (row.state, row.probe_owner, row.probe_until) == (HALF_OPEN, "a", NOW + 40)
    # The probe's process died: once its lease is over, another takes the probe.
    assert await store.claim_provider_probe("seedancee2", owner="b", now=NOW + 40, lease_seconds=10)
    [row] = await store.provider_health()
    assert row.probe_owner == "b"


async def test_a_probe_given_back_is_taken_at_once_and_only_its_own_lease_gives_it_back(store: Store) -> None:
    await fail(store, 3)
    assert await store.claim_provider_probe("seedancee2", owner="a", now=NOW + 30, lease_seconds=10)
    # Another owner, or the same owner naming an older probe of its own, gives nothing back.
    assert not await store.release_provider_probe("seedancee2", owner="b", probe_until=NOW + 40, now=NOW + 31)
    assert not await store.release_provider_probe("seedancee2", owner="a", probe_until=NOW + 39, now=NOW + 31)
    assert await store.release_provider_probe("seedancee2", owner="a", probe_until=NOW + 40, now=NOW + 31)
    [row] = await store.provider_health()
    assert (row.state, row.probe_owner, row.failures) == (OPEN, None, 3)
    assert not await store.release_provider_probe("seedancee2", owner="a", probe_until=NOW + 40, now=NOW + 31)
    assert await store.claim_provider_probe("seedancee2", owner="b", now=NOW + 31, lease_seconds=10)


async def test_a_failed_probe_reopens_with_the_cooldown_doubled_up_to_the_cap(store: Store) -> None:
    await fail(store, 3)
    cooldowns = []
    at = NOW
    for _ in range(3):
        [row] = await store.provider_health()
        at = row.open_until or 0.0
        assert await store.claim_provider_probe("seedancee2", owner="a", now=at, lease_seconds=10)
        await fail(store, 1, at=at)
        [row] = await store.provider_health()
        assert row.state == OPEN
        cooldowns.append((row.open_until or 0.0) - at)
    assert cooldowns == [60.0, 100.0, 100.0]


async def test_another_processes_failure_does_not_end_the_probe(store: Store) -> None:
    await fail(store, 3)
    assert await store.claim_provider_probe("seedancee2", owner="a", now=NOW + 30, lease_seconds=10)
    await fail(store, 1, at=NOW + 31, owner="b")  # a create "b" sent before the circuit opened
    [row] = await store.provider_health()
    assert (row.state, row.probe_owner, row.failures) == (HALF_OPEN, "a", 4)


async def test_a_successful_probe_closes_the_circuit(store: Store) -> None:
    await fail(store, 3)
    assert await store.claim_provider_probe("seedancee2", owner="a", now=NOW + 30, lease_seconds=10)
    await store.record_provider_outcome("seedancee2", failed=False, owner="a", error=None, now=NOW + 31, policy=POLICY)
    [row] = await store.provider_health()
    assert (row.state, row.failures, row.open_until, row.probe_owner) == (CLOSED, 0, None, None)
    assert row.last_error == "HTTP 500"  # kept for GET /v1/providers


async def test_the_circuit_survives_reopening_the_store(backend: Backend, store: Store) -> None:
    await fail(store, 3)
    await store.close()
    again = backend.new_store()
    await again.open()
    try:
        [row] = await again.provider_health()
        assert (row.state, row.open_until) == (OPEN, NOW + 30)
    finally:
        await again.close()


async def test_jobs_in_flight_counts_unfinished_jobs_by_provider(store: Store) -> None:
    await create(store)
    await create(store, stage=Stage.SUBMITTED, status="submitted")
    await create(store, stage=Stage.TERMINAL, status="succeeded")
    await create(store, provider="minuit")
    assert await store.jobs_in_flight() == {"seedancee2": 2, "minuit": 1}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_jobs_in_flight_reads_its_index(backend: Backend, store: Store) -> None:
    query = "SELECT provider, count(*) FROM jobs WHERE stage < 3 GROUP BY provider"  # the store's
    plan = await backend.execute(f"EXPLAIN QUERY PLAN {query}")
    assert any("jobs_in_flight" in str(step) for step in plan), plan


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_two_replicas_share_the_circuit_and_only_one_wins_the_probe(backend: Backend, store: Store) -> None:
    replica = backend.new_store()
    await replica.open()
    try:
        await fail(store, 2, owner="a")
        await fail(replica, 1, owner="b")  # the count is the database's, whoever fails
        [row] = await replica.provider_health()
        assert (row.state, row.failures) == (OPEN, 3)
        claims = [
            s.claim_provider_probe("seedancee2", owner=name, now=NOW + 30, lease_seconds=10)
            for _ in range(10)
            for s, name in ((store, "a"), (replica, "b"))
        ]
        won = await asyncio.gather(*claims)
        assert won.count(True) == 1
        [row] = await store.provider_health()
        assert row.state == HALF_OPEN
        # The winner's probe succeeds; both replicas read the circuit closed.
        await (store if row.probe_owner == "a" else replica).record_provider_outcome(
            "seedancee2", failed=False, owner=row.probe_owner or "", error=None, now=NOW + 31, policy=POLICY
        )
        assert [(r.state, r.failures) for r in await replica.provider_health()] == [(CLOSED, 0)]
        assert [(r.state, r.failures) for r in await store.provider_health()] == [(CLOSED, 0)]
    finally:
        await replica.close()
