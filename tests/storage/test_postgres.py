"""PostgreSQL-only behaviour: several replicas on one database (event fan-out, leases, races), and the edges."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import msgspec
import pytest

from storage import (
    AttemptRecord,
    AttemptResult,
    DeliveryStatus,
    EndpointChange,
    IdempotencyClaim,
    JobRecord,
    Receipt,
    SchemaOutdated,
    SharesLimits,
    StorageUnavailable,
    Store,
    SupportsBackup,
    create_store,
    migrations,
)
from storage.base import Decision
from storage.postgres import PostgresStore
from tests.storage.conftest import Backend
from tests.storage.factories import KEY_A, KEY_B, encode_snapshot, make_endpoint, make_job
from tests.storage.test_contract import Recorder, create, to_status

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

replace = msgspec.structs.replace
NOW = 1_750_000_000.0


@pytest.fixture
async def replica(backend: Backend, store: Store) -> AsyncIterator[Store]:
    """A second open store on the same database, as another process would have."""
    other = backend.new_store()
    await other.open()
    yield other
    await other.close()


def owner(store: Store) -> str:
    return cast("PostgresStore", store).lease_owner


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def announced(recorder: Recorder) -> list[int]:
    return [event.id for call in recorder.calls for event in call]


async def feed_pids(backend: Backend, store: Store) -> list[int]:
    rows = await backend.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", (f"reelay-events {owner(store)}",)
    )
    return [pid for (pid,) in rows]


# -- wiring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_makes_a_postgres_store(backend: Backend, scheme: str) -> None:
    assert isinstance(
        create_store(f"{scheme}://reelay@db.internal/reelay", encode_snapshot, clock=time.time), PostgresStore
    )


async def test_a_server_database_is_not_backed_up_by_the_store(store: Store) -> None:
    assert not isinstance(store, SupportsBackup)


async def test_opening_an_unreachable_server_is_unavailable(backend: Backend) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    closed = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/reelay", encode_snapshot, clock=time.time)
    with pytest.raises(StorageUnavailable):
        await closed.open()
    with pytest.raises(StorageUnavailable):
        await closed.check()


async def test_a_store_on_a_read_only_server_opens_but_is_not_ready(backend: Backend, store: Store) -> None:
    # Sessions on a standby behave like this: reads work, every write is refused.
    read_only = PostgresStore(backend.url + "&default_transaction_read_only=on", encode_snapshot, clock=time.time)
    await read_only.open()
    try:
        assert await read_only.get_api_key(KEY_A.id) == KEY_A
        with pytest.raises(StorageUnavailable, match="read-only"):
            await read_only.check()
        with pytest.raises(StorageUnavailable, match="read-only"):
            await read_only.create_job(make_job(), "job.created")
    finally:
        await read_only.close()


async def test_check_reports_a_schema_newer_than_the_database(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = migrations.load
    monkeypatch.setattr(migrations, "load", lambda backend: [*real(backend), (9999, "9999_future", "SELECT 1;")])
    with pytest.raises(SchemaOutdated):
        await store.check()


async def test_replicas_starting_together_apply_each_migration_once(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    rows = await backend.execute("SELECT name FROM schema_migrations ORDER BY version")
    assert [name for (name,) in rows] == [name for _, name, _ in migrations.load("postgresql")]


async def test_json_input_is_kept_verbatim_even_with_a_nul_character(store: Store) -> None:
    job = make_job(input={"prompt": "a\x00b", "provider_options": {"big": 1e300, "tiny": 1e-7, "exact": 10.0}})
    await store.create_job(job, "job.created")
    assert await store.get_job(job.id) == job


# -- events across replicas --------------------------------------------------------------------


async def test_events_one_replica_commits_reach_anothers_listeners_in_order(store: Store, replica: Store) -> None:
    recorder = Recorder()
    replica.add_listener(recorder)
    job = await create(store)
    for status in ("processing", "succeeded"):
        await store.update_job(job.id, to_status(status))
    logged = [event.id for event in await store.events_after(0)]
    await eventually(lambda: announced(recorder) == logged)
    assert [len(call) for call in recorder.calls] == [1, 1, 1]  # one call per commit, as for local writes


async def test_every_replica_announces_every_event_once_in_id_order(store: Store, replica: Store) -> None:
    here, there = Recorder(), Recorder()
    store.add_listener(here)
    replica.add_listener(there)
    jobs = [await create(store) for _ in range(10)]
    writes = []
    for i, job in enumerate(jobs):
        writer = store if i % 2 else replica
        writes.append(writer.create_job(make_job(), "job.created"))
        writes.append(writer.update_job(job.id, to_status("processing")))
    await asyncio.gather(*writes)
    logged = [event.id for event in await store.events_after(0, limit=1000)]
    await eventually(lambda: announced(here) == logged and announced(there) == logged)
    assert {len(call) for call in here.calls + there.calls} == {1}  # one call per commit, even read in a batch


async def test_a_replica_catches_up_after_losing_its_listen_connection(
    backend: Backend, store: Store, replica: Store
) -> None:
    follower = cast("PostgresStore", replica)
    follower.feed_check_seconds = 3600  # what is missed must come back through the reconnection, not a timer
    follower.reconnect_delays = (1.0,)  # a window in which the writes below find nobody listening
    await follower.close()
    await follower.open()
    recorder = Recorder()
    follower.add_listener(recorder)
    await create(store)
    await eventually(lambda: len(announced(recorder)) == 1)

    [killed] = await feed_pids(backend, follower)
    await backend.execute("SELECT pg_terminate_backend($1, 5000)", (killed,))  # returns once it is gone
    for _ in range(5):
        job = await create(store)
        await store.update_job(job.id, to_status("processing"))
    assert await feed_pids(backend, follower) == []  # they were committed while it did not listen

    logged = [event.id for event in await store.events_after(0)]
    await eventually(lambda: announced(recorder) == logged)
    assert {len(call) for call in recorder.calls} == {1}  # read back in one batch, still one call per commit
    [listening] = await feed_pids(backend, follower)
    assert listening != killed
    await create(store)  # and it follows live events again
    await eventually(lambda: len(announced(recorder)) == len(logged) + 1)


async def test_local_writes_are_announced_before_they_return(store: Store, replica: Store) -> None:
    recorder = Recorder()
    store.add_listener(recorder)
    for _ in range(3):
        await create(replica)  # events of another process arrive in between
        outcome = await store.create_job(make_job(), "job.created")
        assert outcome.event is not None
        assert announced(recorder)[-1] == outcome.event.id
    await eventually(lambda: len(announced(recorder)) == 6)
    assert announced(recorder) == [event.id for event in await store.events_after(0)]


async def test_a_closed_store_stops_listening(backend: Backend, store: Store, replica: Store) -> None:
    recorder = Recorder()
    replica.add_listener(recorder)
    await replica.close()
    await create(store)
    await asyncio.sleep(0.2)
    assert recorder.calls == []
    assert await feed_pids(backend, replica) == []


async def test_a_failing_listener_does_not_stop_the_others(store: Store, replica: Store) -> None:
    def broken(events: object) -> None:
        raise RuntimeError("listener bug")

    recorder = Recorder()
    replica.add_listener(broken)
    replica.add_listener(recorder)
    await create(store)
    await create(store)
    await eventually(lambda: len(announced(recorder)) == 2)


# -- leases across replicas --------------------------------------------------------------------


async def test_two_replicas_claiming_at_once_never_share_a_live_lease(store: Store, replica: Store) -> None:
    for i in range(30):
        await create(store, next_attempt_at=NOW - i)
    lease = 25.0
    held: dict[str, tuple[str, float]] = {}
    claimed_by: set[str] = set()
    for round_ in range(40):
        now = NOW + 10 * round_
        claims = [s.claim_dispatch(now, limit=4, lease_seconds=lease) for s in (store, replica) for _ in range(2)]
        results = await asyncio.gather(*claims)
        for i, jobs in enumerate(results):
            taker = owner(store if i < 2 else replica)
            for job in jobs:
                if job.id in held:
                    holder, until = held[job.id]
                    assert until <= now, f"{job.id} claimed by {taker} while {holder} held it until {until}"
                held[job.id] = (taker, now + lease)
                claimed_by.add(taker)
    assert claimed_by == {owner(store), owner(replica)}


async def test_a_claimed_lease_expires_for_every_replica(store: Store, replica: Store) -> None:
    job = await create(store, next_attempt_at=NOW)
    await store.claim_dispatch(NOW, limit=10, lease_seconds=30)
    assert await replica.claim_dispatch(NOW + 29.9, limit=10, lease_seconds=30) == []
    assert [j.id for j in await replica.claim_dispatch(NOW + 30, limit=10, lease_seconds=30)] == [job.id]


async def test_release_leases_leaves_other_replicas_leases_alone(store: Store, replica: Store) -> None:
    mine = await create(store, next_attempt_at=NOW - 1)
    theirs = await create(store, next_attempt_at=NOW)
    assert [j.id for j in await store.claim_dispatch(NOW, limit=1, lease_seconds=30)] == [mine.id]
    assert [j.id for j in await replica.claim_dispatch(NOW, limit=1, lease_seconds=30)] == [theirs.id]
    assert await store.release_leases() == 1
    assert await store.claim_dispatch(NOW, limit=10, lease_seconds=30) == [replace(mine, lease_until=NOW + 30)]
    assert await store.release_leases() == 1
    assert [j.id for j in await replica.claim_dispatch(NOW, limit=10, lease_seconds=30)] == [mine.id]


async def test_a_lease_given_back_by_an_update_names_no_owner(backend: Backend, store: Store) -> None:
    job = await create(store, next_attempt_at=NOW)
    await store.claim_dispatch(NOW, limit=1, lease_seconds=30)
    holder = "SELECT lease_owner FROM jobs WHERE id = $1"
    assert await backend.execute(holder, (job.id,)) == [(owner(store),)]
    await store.update_job(job.id, lambda j: (replace(j, lease_until=None), None))
    assert await backend.execute(holder, (job.id,)) == [(None,)]
    assert await store.release_leases() == 0


async def test_two_replicas_claiming_deliveries_at_once_never_take_the_same_one(
    backend: Backend, store: Store, replica: Store
) -> None:
    endpoints = [make_endpoint() for _ in range(3)]
    for made in endpoints:
        assert await store.create_endpoint(made, max_per_key=10)
    made_ids = {(await store.create_test_delivery(endpoints[i % 3], b"{}", now=NOW - i)).id for i in range(60)}
    taken: dict[str, str] = {}
    while True:
        claims = [s.claim_deliveries(NOW, 7, 30.0, per_target=4, busy={}) for s in (store, replica) * 3]
        results = await asyncio.gather(*claims)
        if not any(results):
            break
        for i, claimed in enumerate(results):
            for c in claimed:
                assert c.delivery.id not in taken, f"{c.delivery.id} claimed twice"
                taken[c.delivery.id] = owner((store, replica)[i % 2])
    assert set(taken) == made_ids
    assert set(taken.values()) == {owner(store), owner(replica)}
    rows = await backend.execute("SELECT id, lease_owner FROM webhook_deliveries")
    assert dict(rows) == taken


async def test_release_leases_leaves_other_replicas_delivery_leases_alone(store: Store, replica: Store) -> None:
    made = make_endpoint()
    await store.create_endpoint(made, max_per_key=10)
    mine = await store.create_test_delivery(made, b"{}", now=NOW - 1)
    theirs = await store.create_test_delivery(made, b"{}", now=NOW)
    assert [c.delivery.id for c in await store.claim_deliveries(NOW, 1, 30.0, per_target=8, busy={})] == [mine.id]
    assert [c.delivery.id for c in await replica.claim_deliveries(NOW, 1, 30.0, per_target=8, busy={})] == [theirs.id]
    assert await store.release_leases() == 1
    assert [c.delivery.id for c in await replica.claim_deliveries(NOW, 10, 30.0, per_target=8, busy={})] == [mine.id]


async def test_finishing_attempts_and_disabling_endpoints_on_two_replicas_at_once_never_deadlocks(
    store: Store, replica: Store
) -> None:
    endpoints = [make_endpoint() for _ in range(2)]
    for made in endpoints:
        await store.create_endpoint(made, max_per_key=10)
    for _ in range(10):
        for made in endpoints:
            for _ in range(4):
                await store.create_test_delivery(made, b"{}", now=NOW)
        claimed = await store.claim_deliveries(NOW, 100, 30.0, per_target=100, busy={})
        results = [
            AttemptResult(
                attempt=AttemptRecord(
                    delivery_id=c.delivery.id, attempted_at="2025-06-15T15:06:40Z", duration_ms=1.0, status_code=500
                ),
                status=DeliveryStatus.PENDING,
                at=NOW,
                next_attempt_at=NOW + 60,
            )
            for c in claimed
        ]
        # Each replica finishes half, in opposite endpoint orders, while the endpoints are switched off and on.
        await asyncio.gather(
            store.finish_attempts(results[::2], disable_after_seconds=3600),
            replica.finish_attempts(results[1::2][::-1], disable_after_seconds=3600),
            *(
                s.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=on), now=NOW)
                for s, made, on in ((store, endpoints[0], True), (replica, endpoints[1], True))
            ),
        )
        for made in endpoints:
            await store.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=False), now=NOW)
    views = await store.endpoint_deliveries(KEY_A.id, endpoints[0].id, status=None, limit=100)
    assert sum(v.delivery.attempts for v in views) == 40


# -- races between replicas --------------------------------------------------------------------


async def test_one_idempotency_key_used_by_two_replicas_at_once_makes_one_job(store: Store, replica: Store) -> None:
    for n in range(10):
        claim = IdempotencyClaim(key=f"idem-{n}", request_hash="sha256:aaaa")
        outcomes = await asyncio.gather(
            *(s.create_job(make_job(), "job.created", idempotency=claim) for s in (store, replica) * 3)
        )
        assert [o.created for o in outcomes].count(True) == 1
        assert len({o.job.id for o in outcomes}) == 1
    assert len(await store.events_after(0)) == 10


async def test_endpoints_created_on_two_replicas_at_once_never_pass_the_cap(store: Store, replica: Store) -> None:
    created = await asyncio.gather(*(s.create_endpoint(make_endpoint(), max_per_key=3) for s in (store, replica) * 5))
    assert created.count(True) == 3
    assert len(await store.list_endpoints(KEY_A.id)) == 3


async def test_updates_from_two_replicas_at_once_are_not_lost(store: Store, replica: Store) -> None:
    job = await create(store)

    def one_more_poll(j: JobRecord) -> Decision:
        return replace(j, poll_attempts=j.poll_attempts + 1), None

    await asyncio.gather(*(s.update_job(job.id, one_more_poll) for s in (store, replica) * 20))
    updated = await store.get_job(job.id)
    assert updated is not None
    assert updated.poll_attempts == 40


async def test_one_webhook_delivered_to_two_replicas_at_once_counts_once(store: Store, replica: Store) -> None:
    job = await create(store)
    receipt = Receipt(provider="seedancee2", key="evt_1")
    outcomes = await asyncio.gather(
        *(s.update_job(job.id, to_status("processing"), receipt=receipt) for s in (store, replica) * 3)
    )
    assert [o.duplicate for o in outcomes].count(False) == 1
    assert [e.type for e in await store.events_after(0)] == ["job.created", "job.updated"]


# -- per-key limits across replicas ------------------------------------------------------------


def shared(store: Store) -> SharesLimits:
    assert isinstance(store, SharesLimits)
    return store


async def test_two_replicas_spend_one_request_bucket_per_key(store: Store, replica: Store) -> None:
    takes = [shared(s).take_request(KEY_A.id, rate=0.01, burst=5) for s in (store, replica) * 4]
    waits = await asyncio.gather(*takes)
    assert waits.count(None) == 5  # one bucket of 5, whichever replica asks
    assert all(wait is not None and 0 < wait <= 100 for wait in waits if wait is not None)
    assert await shared(replica).take_request(KEY_B.id, rate=0.01, burst=5) is None  # another key, another bucket


async def test_a_request_bucket_refills_at_its_rate(store: Store, replica: Store) -> None:
    assert await shared(store).take_request(KEY_A.id, rate=20.0, burst=1) is None
    wait = await shared(replica).take_request(KEY_A.id, rate=20.0, burst=1)
    assert wait is not None
    assert 0 < wait <= 0.05
    await asyncio.sleep(wait + 0.01)  # the time the bucket asked for
    assert await shared(replica).take_request(KEY_A.id, rate=20.0, burst=1) is None


async def test_stream_slots_opened_on_two_replicas_at_once_never_pass_the_cap(store: Store, replica: Store) -> None:
    opened = await asyncio.gather(
        *(shared(s).open_stream_slot(KEY_A.id, f"slot-{i}", cap=3, ttl=30) for i, s in enumerate((store, replica) * 6))
    )
    assert opened.count(True) == 3
    assert await shared(store).open_stream_slot(KEY_B.id, "other", cap=3, ttl=30)  # each key has its own cap
    winner = f"slot-{opened.index(True)}"
    await shared(replica).release_stream_slots([(KEY_A.id, winner)])  # any replica may give a slot back
    assert await shared(replica).open_stream_slot(KEY_A.id, "after-release", cap=3, ttl=30)
    assert not await shared(store).open_stream_slot(KEY_A.id, "over", cap=3, ttl=30)


async def test_a_stream_slot_lapses_after_its_ttl_unless_renewed(
    backend: Backend, store: Store, replica: Store
) -> None:
    assert await shared(store).open_stream_slot(KEY_A.id, "renewed", cap=2, ttl=0.5)
    assert await shared(store).open_stream_slot(KEY_A.id, "dropped", cap=2, ttl=0.5)
    assert not await shared(replica).open_stream_slot(KEY_A.id, "refused", cap=2, ttl=0.5)
    await shared(store).renew_stream_slots([(KEY_A.id, "renewed")], ttl=60)
    deadline = time.monotonic() + 5
    while not await shared(replica).open_stream_slot(KEY_A.id, "taken", cap=2, ttl=60):
        assert time.monotonic() < deadline, "the unrenewed slot never lapsed"
        await asyncio.sleep(0.05)
    rows = await backend.execute("SELECT id, owner FROM stream_slots ORDER BY id")
    assert rows == [("renewed", owner(store)), ("taken", owner(replica))]  # the lapsed one is gone
