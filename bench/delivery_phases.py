"""Phases h, h2 and h3: caller webhooks, from a provider's webhook into Reelay to the caller's receiver.

Reelay runs as in the other phases (production defaults, SQLite with synchronous=FULL) with
REELAY_WEBHOOK_ALLOW_PRIVATE=true, since the receivers are on loopback. The receivers are `bench/receiver.py`, a
process of its own. Every endpoint is registered through `POST /v1/webhook-endpoints` with `events:
["job.succeeded"]`, and every event is a signed Seedancee2 completion callback, as in phases b and d, for a job
seeded through the store's own API.

- h. 100 keys (100 callers), one endpoint each, each on its own URL of the receiver. Completion callbacks at
  200/s for 20 s, round-robin over the keys: each endpoint gets 2 deliveries a second. The latency runs from
  writing each callback to Reelay until the delivery's last byte arrives at the receiver (both read
  CLOCK_MONOTONIC), matched by the job id in the delivery's `data`.
- h2. The same on 100 new keys, of which 20 have their endpoint on a black hole (a listener that accepts and
  reads but never answers, so each attempt to it lasts REELAY_WEBHOOK_TIMEOUT, 15 s by default). Measured: the
  80 healthy endpoints' latency, and how many of their deliveries took more than 1 s.
- h3. One key with 10 endpoints; the receiver is down (connections refused) while 5,000 completion callbacks
  record 50,000 deliveries; then it comes back, and the phase measures how fast the backlog drains and how much
  Reelay's RSS grew. REELAY_WEBHOOK_RETRY_SCHEDULE is 0 then 1 s for every retry, so that every delivery is
  due again at most 1 s after the receiver is back: the drain measures the deliverer, not the schedule.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.common import BIN, CpuMeter, Process, cpu_seconds, http, ms, percentile, rss_bytes, say, spawn
from bench.load import py_spy
from bench.receiver import Arrival
from bench.sse import Sender, paced
from bench.target import Database, Key, SeededJob, reelay, reelay_env, webhook_request
from tests.ports import free_ports

ENDPOINTS = 100
RATE = 200  # provider webhooks per second, each one delivery
SECONDS = 20.0
BLACK_HOLED = 20  # of the endpoints in h2
LATE_SECONDS = 1.0
ARRIVAL_TIMEOUT = 30.0  # after the last webhook; a delivery later than this stops the run
DRAIN_ENDPOINTS = 10
DRAIN_EVENTS = 5_000  # each delivered to every one of the DRAIN_ENDPOINTS: 50,000 deliveries
DRAIN_RETRIES = 119  # 1 s apart: a delivery could fail for about 2 min before it runs out of attempts
DRAIN_SCHEDULE = ",".join(["0", *["1"] * DRAIN_RETRIES])
PRODUCE_CONNECTIONS = 32
DRAIN_TIMEOUT = 600.0  # a drain slower than 84/s stops the run: a slow drain is a result, a stuck one is not
PROFILE_SECONDS = 15  # of the drain, sampled by py-spy with --profile
EVENTS = ["job.succeeded"]


@dataclass
class Receiver:
    """The receiver process (bench/receiver.py): deliveries on `port + 1`, a black hole on `port + 2`."""

    process: Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, index: int, *, black_hole: bool = False) -> str:
        return f"http://127.0.0.1:{self.process.port + (2 if black_hole else 1)}/e/{index}"

    async def delivered(self) -> int:
        """Deliveries answered 200 so far, distinct by `webhook-id`."""
        answer = msgspec.json.decode(await http(self.process.port, "GET", "/count"))
        return int(answer["delivered"])

    async def arrivals(self) -> list[Arrival]:
        return msgspec.json.decode(await http(self.process.port, "GET", "/arrivals"), type=list[Arrival])

    async def down(self) -> None:
        await http(self.process.port, "POST", "/down")

    async def up(self) -> None:
        await http(self.process.port, "POST", "/up")

    async def wait_delivered(self, count: int, timeout: float, what: str) -> None:
        deadline = time.perf_counter() + timeout
        while (got := await self.delivered()) < count:
            if time.perf_counter() >= deadline:
                raise RuntimeError(f"not within {timeout:g} s: {what} ({got:,} of {count:,} delivered)")
            await asyncio.sleep(0.05)


@contextmanager
def receiver(log: Path) -> Iterator[Receiver]:
    port = free_ports(3)
    command = [str(BIN / "python"), "-m", "bench.receiver", str(port), str(port + 1), str(port + 2)]
    with spawn(command, dict(os.environ), log, port) as process:
        yield Receiver(process)


async def register(port: int, owners: list[Key], urls: list[str]) -> None:
    """One endpoint per URL, owned by the key beside it, through the public API."""
    for key, url in zip(owners, urls, strict=True):
        body = msgspec.json.encode({"url": url, "events": EVENTS, "description": "bench"})
        headers = {"authorization": f"Bearer {key.secret}", "content-type": "application/json"}
        answer = await http(port, "POST", "/v1/webhook-endpoints", body, headers)
        try:
            created = msgspec.json.decode(answer)
        except msgspec.DecodeError:
            created = None
        if not isinstance(created, dict) or "id" not in created:
            raise RuntimeError(f"registering an endpoint for {url} answered {answer[:300]!r}")


# -- h and h2: latency, without and with black-holed endpoints -------------------------------------


def latency(work: Path, *, black_holes: bool = True) -> dict[str, Any]:
    """h, then h2 unless `black_holes` is false (h2's target is relative to h, so h always runs)."""
    database = Database(f"sqlite:///{work / 'deliveries.db'}")
    started = time.perf_counter()
    keys = asyncio.run(database.keys((2 if black_holes else 1) * ENDPOINTS))
    per_key = 1 + int(RATE * SECONDS / ENDPOINTS)  # one for the warm-up
    jobs = asyncio.run(database.submitted_jobs_each(keys, per_key))
    seconds = time.perf_counter() - started
    say(f"     seeded {len(keys)} keys and {len(keys) * per_key:,} submitted jobs in {seconds:.1f} s")
    env = reelay_env(database.url, free_ports(1), REELAY_WEBHOOK_ALLOW_PRIVATE="true")
    # The receiver stops first: the black hole's connections close, so Reelay's attempts to it end at once.
    with reelay(env, work / "reelay-deliveries.log") as server, receiver(work / "receiver-latency.log") as rx:
        return asyncio.run(_latency_phases(server, rx, keys, jobs))


async def _latency_phases(
    server: Process, rx: Receiver, keys: list[Key], jobs: dict[str, list[SeededJob]]
) -> dict[str, Any]:
    """h on the first ENDPOINTS keys, h2 on the next ENDPOINTS if there are."""
    h = await _delivery_latency(server, rx, keys[:ENDPOINTS], jobs, black_holed=0)
    say(
        f"  h. provider webhook -> caller's endpoint, {ENDPOINTS} endpoints at {RATE}/s: "
        f"p50 {h['latency_p50_ms']:.2f} ms, p99 {h['latency_p99_ms']:.2f} ms, max {h['latency_max_ms']:.1f} ms"
    )
    if len(keys) == ENDPOINTS:
        return {"h": h}
    h2 = await _delivery_latency(server, rx, keys[ENDPOINTS:], jobs, black_holed=BLACK_HOLED)
    h2["p99_vs_h"] = round(h2["latency_p99_ms"] / h["latency_p99_ms"], 2)
    say(
        f"  h2. the same with {BLACK_HOLED} endpoints black-holed: healthy p50 {h2['latency_p50_ms']:.2f} ms, "
        f"p99 {h2['latency_p99_ms']:.2f} ms ({h2['p99_vs_h']:.2f} x h), max {h2['latency_max_ms']:.1f} ms; "
        f"{h2['late']} later than {LATE_SECONDS:g} s"
    )
    return {"h": h, "h2": h2}


async def _delivery_latency(
    server: Process, rx: Receiver, keys: list[Key], jobs: dict[str, list[SeededJob]], black_holed: int
) -> dict[str, Any]:
    """One endpoint per key, the first `black_holed` on the black hole; callbacks round-robin over the keys."""
    urls = [rx.url(i, black_hole=i < black_holed) for i in range(len(keys))]
    await register(server.port, keys, urls)
    healthy = {job.id for key in keys[black_holed:] for job in jobs[key.id]}
    rounds = list(zip(*(jobs[key.id] for key in keys), strict=True))  # round i: the i-th job of every key
    warm, measured = rounds[0], [job for one in rounds[1:] for job in one]
    sender = Sender(server.port)
    delivered = await rx.delivered()
    await _sent(paced(sender, {job.id: webhook_request(job) for job in warm}, RATE))
    delivered += len(keys) - black_holed
    await rx.wait_delivered(delivered, ARRIVAL_TIMEOUT, "the warm-up deliveries")

    meter = CpuMeter(server.pid)
    rx_cpu = cpu_seconds(rx.pid)
    window = time.perf_counter()
    sent_at = await _sent(paced(sender, {job.id: webhook_request(job) for job in measured}, RATE))
    expected = [job.id for job in measured if job.id in healthy]
    await rx.wait_delivered(delivered + len(expected), ARRIVAL_TIMEOUT, "a delivery for every healthy endpoint")
    cpu = meter.read()
    receiver_cpu = 100 * (cpu_seconds(rx.pid) - rx_cpu) / (time.perf_counter() - window)
    sender.close()

    first: dict[str, float] = {}
    repeats = 0
    for arrival in await rx.arrivals():
        if arrival.job_id in sent_at:
            if arrival.job_id in first:
                repeats += 1
            else:
                first[arrival.job_id] = arrival.at
    latencies = [first[job_id] - sent_at[job_id] for job_id in expected]
    return {
        "endpoints": len(keys),
        "black_holed": black_holed,
        "webhooks": len(measured),
        "webhook_rate": RATE,
        "deliveries_measured": len(latencies),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(max(latencies)),
        "late": sum(1 for x in latencies if x > LATE_SECONDS),
        "repeated_deliveries": repeats,
        **cpu,
        "receiver_cpu_pct": round(receiver_cpu, 1),
    }


async def _sent(sending: Coroutine[Any, Any, tuple[dict[str, float], list[int]]]) -> dict[str, float]:
    """Awaits `paced(...)`; every webhook must be answered 2xx, or the run stops."""
    sent_at, statuses = await sending
    refused = sorted({s for s in statuses if s >= 300})
    if refused:
        raise RuntimeError(f"provider webhooks answered {refused}")
    return dict(sent_at)


# -- h3: backlog drain ---------------------------------------------------------------------------


def drain(work: Path, profile: Path | None = None) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'drain.db'}")
    started = time.perf_counter()
    (key,) = asyncio.run(database.keys(1))
    jobs = asyncio.run(database.submitted_jobs(key, 1 + DRAIN_EVENTS))
    say(f"     seeded {len(jobs):,} submitted jobs in {time.perf_counter() - started:.1f} s")
    env = reelay_env(
        database.url,
        free_ports(1),
        REELAY_WEBHOOK_ALLOW_PRIVATE="true",
        REELAY_WEBHOOK_RETRY_SCHEDULE=DRAIN_SCHEDULE,
    )
    with reelay(env, work / "reelay-drain.log") as server, receiver(work / "receiver-drain.log") as rx:
        return asyncio.run(_drain(server, rx, key, jobs, profile))


async def _drain(
    server: Process, rx: Receiver, key: Key, jobs: list[SeededJob], profile: Path | None
) -> dict[str, Any]:
    await register(server.port, [key] * DRAIN_ENDPOINTS, [rx.url(i) for i in range(DRAIN_ENDPOINTS)])
    sender = Sender(server.port)
    warm, jobs = jobs[0], jobs[1:]
    await _flood(sender, [webhook_request(warm)])
    await rx.wait_delivered(DRAIN_ENDPOINTS, ARRIVAL_TIMEOUT, "the warm-up deliveries")
    await asyncio.sleep(1.0)
    base = rss_bytes(server.pid)
    peak = PeakRss(server.pid)

    await rx.down()
    started = time.perf_counter()
    await _flood(sender, [webhook_request(job) for job in jobs])
    produce_seconds = time.perf_counter() - started
    sender.close()
    if produce_seconds > DRAIN_RETRIES * 0.8:
        raise RuntimeError(f"recording the backlog took {produce_seconds:.0f} s: some may be out of attempts")
    backlog = len(jobs) * DRAIN_ENDPOINTS
    rss_backlog = rss_bytes(server.pid)
    before = await rx.delivered()

    meter = CpuMeter(server.pid)
    rx_cpu = cpu_seconds(rx.pid)
    up_at = time.perf_counter()
    spy = None if profile is None else py_spy(server.pid, profile, PROFILE_SECONDS)
    await rx.up()
    await rx.wait_delivered(before + backlog, DRAIN_TIMEOUT, f"the {backlog:,} deliveries of the backlog")
    cpu = meter.read()
    receiver_cpu = 100 * (cpu_seconds(rx.pid) - rx_cpu) / (time.perf_counter() - up_at)
    peak.stop()
    if spy is not None:
        spy.wait(30)
    rss_after = rss_bytes(server.pid)

    seen: set[str] = set()
    last = up_at
    arrivals = await rx.arrivals()
    for arrival in arrivals:
        if arrival.webhook_id not in seen:
            seen.add(arrival.webhook_id)
            last = max(last, arrival.at)
    seconds = last - up_at
    result = {
        "endpoints": DRAIN_ENDPOINTS,
        "events": len(jobs),
        "deliveries": backlog,
        "retry_schedule": f"0, then 1 s x {DRAIN_RETRIES}",
        "produce_seconds": round(produce_seconds, 1),
        "drain_seconds": round(seconds, 2),
        "per_second": round(backlog / seconds, 1),
        "repeated_deliveries": len(arrivals) - len(seen),
        "rss_base_mib": round(base / 2**20, 1),
        "rss_with_backlog_mib": round(rss_backlog / 2**20, 1),
        "rss_peak_mib": round(max(peak.value, rss_after) / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_growth_mib": round((max(peak.value, rss_after) - base) / 2**20, 1),
        **cpu,
        "receiver_cpu_pct": round(receiver_cpu, 1),
    }
    say(
        f"  h3. backlog: {backlog:,} deliveries recorded in {produce_seconds:.1f} s with the receiver down, "
        f"drained in {seconds:.1f} s ({result['per_second']:,.0f}/s); server RSS {result['rss_growth_mib']:+.1f} MiB "
        f"at its peak"
    )
    return result


async def _flood(sender: Sender, requests: list[bytes]) -> None:
    """Every request as fast as Reelay answers, on PRODUCE_CONNECTIONS keep-alive connections."""
    pending = iter(requests)
    refused: set[int] = set()

    async def worker() -> None:
        for request in pending:
            status = await sender.send(request)
            if status >= 300:
                refused.add(status)

    await asyncio.gather(*(worker() for _ in range(PRODUCE_CONNECTIONS)))
    if refused:
        raise RuntimeError(f"provider webhooks answered {sorted(refused)}")


class PeakRss:
    """The highest RSS of a process, sampled every 100 ms until `stop`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = rss_bytes(pid)
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.value = max(self.value, rss_bytes(self.pid))
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self._task.cancel()
