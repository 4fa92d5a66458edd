"""SSE over real HTTP: resume after Last-Event-ID, the replay→live switch, overflow, heartbeats, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import SandboxKnobs
from service.hub import EventHub
from service.ids import split_api_key
from tests import pg
from tests.harness import Stack, stack
from tests.processes import REELAY

_UNFINISHED = SandboxKnobs(processing_after_s=0.1, complete_after_s=600)


async def _frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each SSE block as a dict of its fields; comment lines are kept under ':'."""
    block: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            block[":"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            block[name] = value.removeprefix(" ")


async def _read_ids(stack_: Stack, count: int, **headers: str) -> list[int]:
    ids: list[int] = []
    async with stack_.client.stream("GET", f"{stack_.url}/v1/events", headers={**stack_.headers, **headers}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for block in _frames(r):
            if "id" in block:
                ids.append(int(block["id"]))
                assert json.loads(block["data"])["id"] == ids[-1]
                if len(ids) == count:
                    return ids
    return ids


@pytest.fixture
async def unfinished(tmp_path: Path) -> AsyncIterator[Stack]:
    """Like `seedance`, but jobs stay processing for the whole test, so their job streams stay open."""
    async with stack(tmp_path, knobs=_UNFINISHED) as running:
        yield running


async def _create_jobs(stack_: Stack, count: int) -> list[str]:
    return [(await stack_.submit())["id"] for _ in range(count)]


async def test_resume_after_any_event_id_gives_exactly_the_rest_of_the_log(seedance: Stack) -> None:
    await _create_jobs(seedance, 4)
    log = [e.id for e in await seedance.store.events_after(0, api_key_id=None)]
    assert len(log) >= 4
    for cut in [0, *log[:-1]]:
        expected = [i for i in log if i > cut]
        async with asyncio.timeout(5):
            got = await _read_ids(seedance, len(expected), **{"Last-Event-ID": str(cut)})
        assert got == expected, f"after {cut}"


async def test_query_parameter_resumes_like_the_header(seedance: Stack) -> None:
    await _create_jobs(seedance, 2)
    log = [e.id for e in await seedance.store.events_after(0)]
    ids: list[int] = []
    async with seedance.client.stream(
        "GET", f"{seedance.url}/v1/events?last_event_id={log[0]}", headers=seedance.headers
    ) as r:
        async for block in _frames(r):
            if "id" in block:
                ids.append(int(block["id"]))
                if len(ids) == len(log) - 1:
                    break
    assert ids == log[1:]


async def test_switch_from_replay_to_live_loses_and_repeats_nothing(seedance: Stack) -> None:
    """Jobs keep being created while a subscriber replays: every id after the cursor arrives once, in order."""
    await _create_jobs(seedance, 5)
    cursor = (await seedance.store.events_after(0))[2].id
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await seedance.submit()

    producer = asyncio.create_task(produce())
    received: list[int] = []
    try:
        async with (
            asyncio.timeout(10),
            seedance.client.stream(
                "GET", f"{seedance.url}/v1/events", headers={**seedance.headers, "Last-Event-ID": str(cursor)}
            ) as r,
        ):
            assert r.status_code == 200
            async for block in _frames(r):
                if "id" in block:
                    received.append(int(block["id"]))
                    if len(received) >= 60:
                        break
    finally:
        stop.set()
        await producer
    assert len(received) == 60
    logged = [e.id for e in await seedance.store.events_after(cursor, limit=10_000)]
    assert received == logged[: len(received)]
    assert len(set(received)) == len(received)


async def test_a_replay_of_many_byte_bounded_pages_then_live_loses_and_repeats_nothing(seedance: Stack) -> None:
    """Long snapshots make the replay span several pages (each bounded in bytes) before it turns live."""
    long_prompt = "waves " * 830  # about 5 KB in every snapshot of the job
    for _ in range(30):
        await seedance.submit(prompt=long_prompt)
    logged = await seedance.store.events_after(0, limit=10_000)
    assert sum(len(e.job) for e in logged) > 2 * 128 * 1024  # more than two replay pages
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await seedance.submit()

    producer = asyncio.create_task(produce())
    try:
        async with asyncio.timeout(10):
            received = await _read_ids(seedance, len(logged) + 20, **{"Last-Event-ID": "0"})
    finally:
        stop.set()
        await producer
    assert received == [e.id for e in await seedance.store.events_after(0, limit=10_000)][: len(received)]
    assert len(received) == len(logged) + 20


async def test_an_event_committed_once_the_headers_arrive_is_delivered(
    seedance: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client may act as soon as it has the response headers: the stream is live by then, even when fixing
    the starting cursor (the last logged id) is slow."""
    store = seedance.store
    read_last_id = store.last_event_id

    async def slow_last_event_id() -> int:
        await asyncio.sleep(0.2)
        return int(await read_last_id())

    monkeypatch.setattr(store, "last_event_id", slow_last_event_id)
    for _ in range(3):
        async with (
            asyncio.timeout(5),
            seedance.client.stream("GET", f"{seedance.url}/v1/events", headers=seedance.headers) as r,
        ):
            assert r.status_code == 200
            job_id = (await seedance.submit())["id"]
            async for block in _frames(r):
                # The previous rounds' jobs may still report; this round's job must open with job.created.
                if "data" in block and (event := json.loads(block["data"]))["job"]["id"] == job_id:
                    assert event["type"] == "job.created"
                    break
            else:
                pytest.fail("the stream ended before job.created")


async def test_slow_subscriber_is_dropped_and_resumes_without_loss(tmp_path: Path) -> None:
    async with stack(tmp_path, sse_queue_size=5) as running:
        frames: list[dict[str, Any]] = []
        async with running.client.stream("GET", f"{running.url}/v1/events", headers=running.headers) as r:
            stream = _frames(r)
            frames.append(await anext(stream))  # `retry:` — the subscription is live now
            while running.hub.subscriber_count == 0:
                await asyncio.sleep(0.01)
            # Commit 20 events while fan-out is held back, then announce them in one burst: more than the
            # subscriber's queue holds before it can run, as when a consumer falls behind.
            store = running.store
            listeners = list(store._listeners)
            store._listeners.clear()
            try:
                before = await store.last_event_id()
                await _create_jobs(running, 20)
            finally:
                store._listeners.extend(listeners)
            burst = await store.events_after(before)
            running.hub.publish(burst)
            async with asyncio.timeout(5):
                async for block in stream:
                    frames.append(block)
        assert frames[-1].get(":", "").startswith("too slow")
        assert running.hub.subscriber_count == 0
        # Whatever it sent before the overflow, resuming after its last id gives the rest: none lost, none twice.
        delivered = [int(f["id"]) for f in frames if "id" in f]
        last = delivered[-1] if delivered else before
        async with asyncio.timeout(5):
            resumed = await _read_ids(running, len(burst) - len(delivered), **{"Last-Event-ID": str(last)})
        assert delivered + resumed == [e.id for e in burst]


async def test_subscriptions_do_not_leak_when_clients_disconnect(unfinished: Stack) -> None:
    seedance = unfinished
    live = await seedance.submit()
    cursor = await seedance.store.last_event_id()
    for round_ in range(3):
        clients = [httpx.AsyncClient(timeout=5) for _ in range(10)]
        streams = []
        for i, client in enumerate(clients):
            path = "/v1/events" if i % 2 else f"/v1/jobs/{live['id']}/events?last_event_id={cursor}"
            cm = client.stream("GET", seedance.url + path, headers=seedance.headers)
            response = await cm.__aenter__()
            assert response.status_code == 200, round_
            streams.append(cm)
        async with asyncio.timeout(5):
            while seedance.hub.subscriber_count < 10:
                await asyncio.sleep(0.01)
        for client in clients:
            await client.aclose()  # abrupt: the connection is dropped mid-stream
        async with asyncio.timeout(5):
            while seedance.hub.subscriber_count:
                await asyncio.sleep(0.01)
    assert seedance.hub.subscriber_count == 0


async def test_heartbeat_comments_keep_idle_streams_alive(tmp_path: Path) -> None:
    async with stack(tmp_path, sse_heartbeat_seconds=0.2) as running:
        pings = 0
        async with (
            asyncio.timeout(5),
            running.client.stream("GET", f"{running.url}/v1/events", headers=running.headers) as r,
        ):
            frames = _frames(r)
            first = await anext(frames)
            assert first == {"retry": str(running.settings.sse_retry_ms)}
            async for block in frames:
                assert block == {":": "ping"}
                pings += 1
                if pings == 3:
                    break
        assert pings == 3


async def test_heartbeats_are_staggered_per_connection() -> None:
    hub = EventHub()
    rng = random.Random(7)
    subs = [hub.subscribe("key") for _ in range(50)]
    for sub in subs:
        sub.start_heartbeat(15.0, rng)
    loop = asyncio.get_running_loop()
    first = [sub._timer.when() - loop.time() for sub in subs if sub._timer is not None]
    assert len(first) == 50
    assert all(0 < delay <= 15.0 for delay in first)
    assert max(first) - min(first) > 5.0  # spread over the interval, not one global tick
    hub.close_all()
    assert hub.subscriber_count == 0
    assert all(sub._timer is None for sub in subs)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999999999999999999"])
async def test_bad_last_event_id_is_refused(seedance: Stack, value: str) -> None:
    response = await seedance.client.get(
        f"{seedance.url}/v1/events", headers={**seedance.headers, "Last-Event-ID": value}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def _frames_until_end(stack_: Stack, path: str, **headers: str) -> list[dict[str, Any]]:
    """Every block of a stream that must end by itself (the caller bounds the wait)."""
    async with stack_.client.stream("GET", stack_.url + path, headers={**stack_.headers, **headers}) as r:
        assert r.status_code == 200, await r.aread()
        return [block async for block in _frames(r)]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_revoked_key_stream_closes_within_cache_window(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """`reelay keys revoke`, another process, revokes the key: this server notices on its own and ends the key's
    streams (the global one and a job's) within the key cache window, and the key's next request is 401."""
    async with contextlib.AsyncExitStack() as resources:
        overrides: dict[str, Any] = {}
        if database == "postgresql":
            server: pg.PostgresServer = request.getfixturevalue("postgres_server")
            overrides["database_url"] = await resources.enter_async_context(server.database())
        running = await resources.enter_async_context(stack(tmp_path, knobs=_UNFINISHED, **overrides))
        job = await running.submit()
        window = running.app.state.ctx.key_cache_seconds
        key_id = _key_id(running)
        streams = [
            asyncio.create_task(_frames_until_end(running, path))
            for path in ("/v1/events", f"/v1/jobs/{job['id']}/events")
        ]
        async with asyncio.timeout(5):
            while running.hub.count_for(key_id) < 2:
                await asyncio.sleep(0.01)
        assert (await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)).status_code == 200
        env = {**os.environ, "REELAY_DATABASE_URL": running.settings.database_url}
        revoke = await asyncio.create_subprocess_exec(REELAY, "keys", "revoke", key_id, env=env)
        assert await revoke.wait() == 0
        revoked = time.monotonic()  # the revocation committed before the command returned
        async with asyncio.timeout(window + 5):
            ends = await asyncio.gather(*streams)
        elapsed = time.monotonic() - revoked
        assert elapsed <= window + 2, f"streams closed {elapsed:.1f} s after the revocation"
        for frames in ends:
            assert frames[-1] == {":": "api key revoked"}
        assert running.hub.count_for(key_id) == 0
        after = await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)
        assert after.status_code == 401


def _key_id(stack_: Stack) -> str:
    parts = split_api_key(stack_.key)
    assert parts is not None
    return parts[0]


async def test_last_event_id_newer_than_newest_event_is_refused(seedance: Stack) -> None:
    """On both stream endpoints, by header or query: an id above the newest committed event is a 400 naming both
    ids, while the newest id itself, even one committed a moment ago, still resumes."""
    async with seedance.client.stream("GET", f"{seedance.url}/v1/events", headers=seedance.headers) as live:
        job = await seedance.submit()
        async with asyncio.timeout(5):
            just_committed = int((await anext(b async for b in _frames(live) if "id" in b))["id"])
    await seedance.wait_for(job["id"], {"succeeded"})  # no event commits while the cursors are tried
    newest = await seedance.store.last_event_id()
    for path in ("/v1/events", f"/v1/jobs/{job['id']}/events"):
        for by in ("header", "query"):
            for cursor, status in ((newest + 1, 400), (just_committed, 200), (newest, 200)):
                url, headers = seedance.url + path, dict(seedance.headers)
                if by == "header":
                    headers["Last-Event-ID"] = str(cursor)
                else:
                    url += f"?last_event_id={cursor}"
                async with seedance.client.stream("GET", url, headers=headers) as r:
                    assert r.status_code == status, (path, by, cursor)
                    if status == 400:
                        error = json.loads(await r.aread())["error"]
                        assert error["code"] == "invalid_last_event_id"
                        assert error["details"] == {"last_event_id": newest + 1, "newest_event_id": newest}


async def test_job_stream_resumed_at_its_terminal_event_ends_at_once(tmp_path: Path) -> None:
    """A finished job's stream resumed at or after its terminal event ends with no event and no ping; opened
    without a cursor it replays the job's events and ends after the terminal one."""
    async with stack(tmp_path, sse_heartbeat_seconds=0.05) as running:
        job = await running.submit()
        await running.wait_for(job["id"], {"succeeded"})
        await running.submit()  # events after the terminal one, of another job
        logged = await running.store.events_after(0, job_id=job["id"])
        assert logged[-1].type == "job.succeeded"
        terminal = logged[-1].id
        path = f"/v1/jobs/{job['id']}/events"
        retry = {"retry": str(running.settings.sse_retry_ms)}
        for cursor in (terminal, await running.store.last_event_id()):
            async with asyncio.timeout(2):
                assert await _frames_until_end(running, path, **{"Last-Event-ID": str(cursor)}) == [retry]
            async with asyncio.timeout(2):
                assert await _frames_until_end(running, f"{path}?last_event_id={cursor}") == [retry]
        async with asyncio.timeout(2):
            replayed = await _frames_until_end(running, path)
        assert replayed[0] == retry
        assert [int(b["id"]) for b in replayed[1:]] == [e.id for e in logged]
        assert replayed[-1]["event"] == "job.succeeded"
        async with asyncio.timeout(2):
            rest = await _frames_until_end(running, path, **{"Last-Event-ID": str(logged[0].id)})
        assert [int(b["id"]) for b in rest[1:]] == [e.id for e in logged[1:]]
