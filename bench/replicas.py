"""Phase g: cross-replica event latency on PostgreSQL, two Reelay replicas on one database.

Replica A (`--role all`) holds an SSE subscriber; provider webhooks go into replica B (`--role api`). B commits each
event and sends NOTIFY; A's LISTEN connection hands it to the subscriber. The latency is from just before a webhook
is written to B until its event's bytes arrive from A. The cluster runs with PostgreSQL's durable defaults (fsync
and synchronous_commit on), so every commit is paid for.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, free_port, http, ms, percentile, say, wait_until
from bench.sse import Sender, close_streams, events_request, open_streams, paced
from bench.target import Database, SeededJob, reelay, reelay_env, webhook_request
from tests.pg import PostgresServer, throwaway_cluster

RATE = 100  # webhooks per second into replica B
SECONDS = 10.0
WARMUP = 50  # webhooks sent (and their events awaited) before measuring
MARGIN = 10  # seeded jobs left over


def run(work: Path) -> dict[str, Any]:
    with throwaway_cluster(durable=True) as server:
        return asyncio.run(_phase(server, work))


async def _phase(server: PostgresServer, work: Path) -> dict[str, Any]:
    async with server.database() as url:
        database = Database(url)  # opening the store migrates the schema before either replica starts
        (key,) = await database.keys(1)
        jobs = await database.submitted_jobs(key, WARMUP + int(RATE * SECONDS) + MARGIN)
        # Start-up blocks the loop (wait_listening sleeps), which is harmless: nothing else runs yet.
        with (
            reelay(reelay_env(url, free_port()), work / "reelay-replica-a.log", role="all") as a,
            reelay(reelay_env(url, free_port()), work / "reelay-replica-b.log", role="api") as b,
        ):
            await _ready(a.port)
            await _ready(b.port)
            return await _latency(a.port, b.port, b.pid, key.secret, jobs)


async def _ready(port: int, timeout: float = 30.0) -> None:
    """Until GET /readyz answers 200 (database reachable, schema current)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if b'"ready"' in await http(port, "GET", "/readyz"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"replica on port {port} not ready within {timeout:.0f} s")


async def _latency(port_a: int, port_b: int, pid_b: int, secret: str, jobs: list[SeededJob]) -> dict[str, Any]:
    (watcher,) = await open_streams(port_a, [events_request(secret)], keep_jobs=True)
    sender = Sender(port_b)
    warmup, jobs = jobs[:WARMUP], jobs[WARMUP : WARMUP + int(RATE * SECONDS)]
    warm_statuses = await asyncio.gather(*(sender.send(webhook_request(job)) for job in warmup))
    await wait_until(lambda: len(watcher.ids) >= WARMUP, 10)
    if len(watcher.ids) < WARMUP or any(s >= 300 for s in warm_statuses):
        raise RuntimeError(
            f"warm-up: {len(watcher.ids)} of {WARMUP} events crossed from B to A; statuses {sorted(set(warm_statuses))}"
        )
    before = len(watcher.ids)

    meter = CpuMeter(pid_b)
    sent_at, statuses = await paced(sender, {job.id: webhook_request(job) for job in jobs}, RATE)
    await wait_until(lambda: len(watcher.ids) - before >= len(jobs), 10)
    cpu = meter.read()
    sender.close()
    await close_streams([watcher])

    arrived = zip(watcher.jobs[before:], watcher.arrivals[before:], strict=True)
    latencies = [arrival - sent_at[job_id] for job_id, arrival in arrived if job_id in sent_at]
    result = {
        "replicas": 2,
        "webhooks": len(jobs),
        "webhook_rate": RATE,
        "non_2xx": sum(1 for s in statuses if s >= 300),
        "events_received": len(latencies),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(max(latencies, default=float("nan"))),
        **cpu,
    }
    say(
        f"  g. cross-replica (PostgreSQL, 2 replicas): webhook into B -> subscriber on A "
        f"p50 {result['latency_p50_ms']:.2f} ms, p99 {result['latency_p99_ms']:.2f} ms "
        f"({result['events_received']:,}/{len(jobs):,} events at {RATE}/s)"
    )
    return result
