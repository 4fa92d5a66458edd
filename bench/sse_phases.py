"""Phases d, e and f: SSE memory, latency, broadcast, heartbeat stalls, churn and a reconnect storm.

All three run against one Reelay process with production defaults (SQLite, synchronous=FULL, a heartbeat every
15 s per connection); the latency window lasts 20 s, so every idle connection beats in it at least once.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, buckets, counter, http, ms, percentile, rss_bytes, say, wait_until
from bench.sse import Sender, Stream, close_streams, events_request, open_streams, webhook_latency
from bench.target import Database, Key, SeededJob, reelay, reelay_env, webhook_request
from tests.ports import free_ports

HEARTBEAT_SECONDS = 15.0  # Reelay's default
IDLE = 10_000
LATENCY_RATE = 200  # webhooks per second while 10k subscribers idle
LATENCY_SECONDS = 20.0
BROADCAST_FANOUT = 1000
BROADCAST_ROUNDS = 20
CHURN_CYCLES = 10_000
CHURN_CONCURRENCY = 100
STORM_KEYS = 10
STORM_EVENTS_WHILE_DOWN = 5  # per key
STORM_GIVE_UP_SECONDS = 120  # the target is 30 s; a storm still going after this has lost streams


class Seeds:
    def __init__(self, keys: list[Key], jobs: dict[str, list[SeededJob]]) -> None:
        self.idle, self.live, self.broadcast, *self.storm = keys
        self.jobs = jobs

    def take(self, key: Key, count: int) -> list[SeededJob]:
        pool = self.jobs[key.id]
        taken, self.jobs[key.id] = pool[:count], pool[count:]
        if len(taken) < count:
            raise RuntimeError(f"seeded too few jobs for key {key.id}")
        return taken


async def _seed(database: Database) -> Seeds:
    keys = await database.keys(3 + STORM_KEYS)
    wanted = {
        keys[1].id: int(LATENCY_RATE * LATENCY_SECONDS) + 50,
        keys[2].id: BROADCAST_ROUNDS + 2,
        **{key.id: STORM_EVENTS_WHILE_DOWN + 2 for key in keys[3:]},
    }
    jobs = {key.id: await database.submitted_jobs(key, wanted.get(key.id, 0)) for key in keys}
    return Seeds(keys, jobs)


def run(work: Path) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'sse.db'}")
    seeds = asyncio.run(_seed(database))
    env = reelay_env(database.url, free_ports(1), REELAY_SSE_HEARTBEAT_SECONDS=f"{HEARTBEAT_SECONDS:g}")
    with reelay(env, work / "reelay-sse.log") as server:
        return asyncio.run(_phases(server.pid, server.port, seeds))


async def _phases(pid: int, port: int, seeds: Seeds) -> dict[str, Any]:
    results: dict[str, Any] = {"heartbeat_seconds": HEARTBEAT_SECONDS}
    results["d"] = await _idle_and_latency(pid, port, seeds)
    results["d"]["broadcast"] = await _broadcast(port, seeds)
    results["e"] = await _churn(pid, port, seeds)
    results["f"] = await _storm(pid, port, seeds)
    return results


async def _settle(seconds: float = 1.0) -> None:
    await asyncio.sleep(seconds)


async def _idle_and_latency(pid: int, port: int, seeds: Seeds) -> dict[str, Any]:
    idle_request = events_request(seeds.idle.secret)
    await _settle()
    base = rss_bytes(pid)
    started = time.perf_counter()
    streams = await open_streams(port, [idle_request] * 1000)
    await _settle()
    at_1k = rss_bytes(pid)
    streams += await open_streams(port, [idle_request] * (IDLE - 1000))
    connect_seconds = time.perf_counter() - started
    await _settle(2.0)
    at_10k = rss_bytes(pid)
    per_1k = (at_1k - base) / 1000
    per_10k = (at_10k - base) / IDLE
    say(
        f"  d. {IDLE:,} idle subscribers connected in {connect_seconds:.1f} s; RSS per subscriber "
        f"{per_1k / 1024:.1f} KiB at 1k, {per_10k / 1024:.1f} KiB at 10k"
    )

    (watcher,) = await open_streams(port, [events_request(seeds.live.secret)], keep_jobs=True)
    jobs = seeds.take(seeds.live, int(LATENCY_RATE * LATENCY_SECONDS))
    pings_before = sum(s.pings for s in streams)
    lag_before = buckets(await http(port, "GET", "/metrics"), "reelay_event_loop_lag_seconds")
    sender = Sender(port)
    latency = await webhook_latency(watcher, sender, {job.id: webhook_request(job) for job in jobs}, LATENCY_RATE, pid)
    lag_after = buckets(await http(port, "GET", "/metrics"), "reelay_event_loop_lag_seconds")
    pings = sum(s.pings for s in streams) - pings_before
    sender.close()
    stall = _longest_stall(lag_before, lag_after)
    result = {
        "subscribers": IDLE,
        "connect_seconds": round(connect_seconds, 1),
        "rss_base_mib": round(base / 2**20, 1),
        "rss_per_subscriber_kib_1k": round(per_1k / 1024, 2),
        "rss_per_subscriber_kib_10k": round(per_10k / 1024, 2),
        **latency,
        "heartbeats_sent": pings,
        "longest_stall_ms_at_most": stall,
    }
    say(
        f"     webhook -> subscriber at {LATENCY_RATE}/s: p50 {result['latency_p50_ms']:.2f} ms, "
        f"p99 {result['latency_p99_ms']:.2f} ms; {pings:,} heartbeats; longest loop stall <= {stall} ms"
    )
    await close_streams([*streams, watcher])
    return result


def _longest_stall(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound, in ms, of the highest lag bucket that gained observations in the window."""
    bounds = sorted(b for b in after if b != float("inf"))
    previous = 0.0
    worst: float | None = None
    for bound in [*bounds, float("inf")]:
        gained = (after.get(bound, 0) - before.get(bound, 0)) - previous
        previous = after.get(bound, 0) - before.get(bound, 0)
        if gained > 0:
            worst = bound
    return None if worst is None else (float("inf") if worst == float("inf") else round(worst * 1000, 1))


async def _broadcast(port: int, seeds: Seeds) -> dict[str, Any]:
    streams = await open_streams(port, [events_request(seeds.broadcast.secret)] * BROADCAST_FANOUT)
    sender = Sender(port)
    spans = []
    for job in seeds.take(seeds.broadcast, BROADCAST_ROUNDS):
        request = webhook_request(job)
        counts = [len(s.ids) for s in streams]
        sent = time.perf_counter()
        await sender.send(request)
        await wait_until(
            lambda counts=counts: all(len(s.ids) > n for s, n in zip(streams, counts, strict=True)),
            10,
            f"broadcast event at all {BROADCAST_FANOUT:,} subscribers",
        )
        spans.append(max(s.arrivals[-1] for s in streams) - sent)
        await asyncio.sleep(0.05)
    sender.close()
    await close_streams(streams)
    result = {
        "subscribers": BROADCAST_FANOUT,
        "rounds": BROADCAST_ROUNDS,
        "last_subscriber_p50_ms": ms(percentile(spans, 50)),
        "last_subscriber_max_ms": ms(max(spans)),
    }
    say(
        f"     broadcast to {BROADCAST_FANOUT:,} subscribers of one key: the last has it after "
        f"{result['last_subscriber_p50_ms']:.1f} ms (median of {BROADCAST_ROUNDS}), "
        f"{result['last_subscriber_max_ms']:.1f} ms at worst"
    )
    return result


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _subscribers(port: int) -> int:
    return int(counter(await http(port, "GET", "/metrics"), "reelay_sse_subscribers"))


async def _churn(pid: int, port: int, seeds: Seeds) -> dict[str, Any]:
    """Connect, get subscribed, disconnect; 10k times, 100 at a time."""
    request = events_request(seeds.idle.secret)
    gate = asyncio.Semaphore(CHURN_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def cycle() -> None:
        async with gate:
            _, stream = await loop.create_connection(lambda: Stream(request), "127.0.0.1", port)
            await stream.ready
            stream.close()
            await stream.closed

    # A first 1,000 cycles warm allocator pools, so growth is measured from a steady state.
    await asyncio.gather(*(cycle() for _ in range(1000)))
    await _settle()
    subs_before, fds_before, rss_before = await _subscribers(port), _open_fds(pid), rss_bytes(pid)
    started = time.perf_counter()
    await asyncio.gather(*(cycle() for _ in range(CHURN_CYCLES // 2)))
    await _settle()
    rss_half = rss_bytes(pid)
    await asyncio.gather(*(cycle() for _ in range(CHURN_CYCLES - CHURN_CYCLES // 2)))
    seconds = time.perf_counter() - started
    await _settle(2.0)
    subs_after, fds_after, rss_after = await _subscribers(port), _open_fds(pid), rss_bytes(pid)
    result = {
        "cycles": CHURN_CYCLES,
        "seconds": round(seconds, 1),
        "leaked_subscriptions": subs_after - subs_before,
        "leaked_fds": fds_after - fds_before,
        "rss_growth_kib": round((rss_after - rss_before) / 1024),
        "rss_growth_second_half_kib": round((rss_after - rss_half) / 1024),
    }
    say(
        f"  e. churn: {CHURN_CYCLES:,} connect/disconnect cycles in {seconds:.1f} s; leaked subscriptions "
        f"{result['leaked_subscriptions']}, fds {result['leaked_fds']}; RSS {result['rss_growth_kib']:+,} KiB "
        f"({result['rss_growth_second_half_kib']:+,} KiB over the second 5k)"
    )
    return result


async def _storm(pid: int, port: int, seeds: Seeds) -> dict[str, Any]:
    """10k subscribers over 10 keys lose their connections at once, miss events, and all come back."""
    per_key = IDLE // STORM_KEYS
    sender = Sender(port)
    # One reference subscriber per key stays connected throughout: what it sees is what was published.
    references = await open_streams(port, [events_request(k.secret) for k in seeds.storm])
    streams = await open_streams(port, [events_request(k.secret) for k in seeds.storm for _ in range(per_key)])
    key_of = [i // per_key for i in range(len(streams))]
    for index, key in enumerate(seeds.storm):
        await sender.send(webhook_request(seeds.take(key, 1)[0]))
        await wait_until(
            lambda index=index: all(len(s.ids) for s in streams[index * per_key : (index + 1) * per_key]),
            10,
            "a first event at every storm subscriber",
        )
    last_seen = [s.last_id for s in streams]
    if any(x is None for x in last_seen):
        raise RuntimeError("a storm subscriber got no event before the drop")
    await close_streams(streams)  # every connection drops at once
    for key in seeds.storm:
        for job in seeds.take(key, STORM_EVENTS_WHILE_DOWN):
            await sender.send(webhook_request(job))
    sender.close()
    await wait_until(
        lambda: all(len(r.ids) >= 1 + STORM_EVENTS_WHILE_DOWN for r in references),
        10,
        "the events published during the drop, at every reference subscriber",
    )
    final = [r.ids[-1] for r in references]
    meter = CpuMeter(pid)
    started = time.perf_counter()
    requests = [events_request(seeds.storm[key_of[i]].secret, last_seen[i]) for i in range(len(streams))]
    resumed = await open_streams(port, requests, concurrency=len(requests))
    waits = [s.wait_for_id(final[key_of[i]]) for i, s in enumerate(resumed)]
    _, pending = await asyncio.wait(waits, timeout=STORM_GIVE_UP_SECONDS)
    if pending:
        raise RuntimeError(f"storm: {len(pending):,} streams not caught up after {STORM_GIVE_UP_SECONDS} s")
    seconds = time.perf_counter() - started
    cpu = meter.read()
    lost = duplicated = 0
    for i, stream in enumerate(resumed):
        expected = {x for x in references[key_of[i]].ids if x > (last_seen[i] or 0)}
        lost += len(expected - set(stream.ids))
        # Sent twice on the new connection, or sent again although the client had it (ids up to Last-Event-ID).
        duplicated += len(stream.ids) - len(set(stream.ids)) + sum(1 for x in stream.ids if x <= (last_seen[i] or 0))
    await close_streams([*resumed, *references])
    result = {
        "subscribers": len(resumed),
        "events_missed_each": STORM_EVENTS_WHILE_DOWN,
        "seconds_to_all_resumed": round(seconds, 2),
        "events_lost": lost,
        "events_duplicated": duplicated,
        **cpu,
    }
    say(
        f"  f. storm: {len(resumed):,} subscribers resumed with Last-Event-ID in {seconds:.2f} s; "
        f"{lost} events lost, {duplicated} duplicated"
    )
    return result
