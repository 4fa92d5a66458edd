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

from bench.common import http, say, wait_until
from bench.sse import Sender, close_streams, events_request, open_streams, webhook_latency
from bench.target import Database, SeededJob, reelay, reelay_env, webhook_request
from tests.pg import PostgresServer, throwaway_cluster
from tests.ports import free_ports

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
        port_a = free_ports(2)  # and the next one for B
        # Start-up blocks the loop (wait_listening sleeps), which is harmless: nothing else runs yet.
        with (
            reelay(reelay_env(url, port_a), work / "reelay-replica-a.log", role="all") as a,
            reelay(reelay_env(url, port_a + 1), work / "reelay-replica-b.log", role="api") as b,
        ):
            await ready(a.port)
            await ready(b.port)
            return await _latency(a.port, b.port, b.pid, key.secret, jobs)


async def ready(port: int, timeout: float = 30.0) -> None:
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
    if any(s >= 300 for s in warm_statuses):
        raise RuntimeError(f"warm-up: webhooks into B answered {sorted(set(warm_statuses))}")
    await wait_until(lambda: len(watcher.ids) >= WARMUP, 10, f"{WARMUP} warm-up events crossing from B to A")
    latency = await webhook_latency(watcher, sender, {job.id: webhook_request(job) for job in jobs}, RATE, pid_b)
    sender.close()
    await close_streams([watcher])
    result = {"replicas": 2, **latency}
    say(
        f"  g. cross-replica (PostgreSQL, 2 replicas): webhook into B -> subscriber on A "
        f"p50 {result['latency_p50_ms']:.2f} ms, p99 {result['latency_p99_ms']:.2f} ms "
        f"({result['events_received']:,}/{len(jobs):,} events at {RATE}/s)"
    )
    return result
