"""Phases i and i2: from a job's creation to its create at the provider, directly and after a failover.

Reelay runs as in phase c (production defaults, SQLite with synchronous=FULL); each provider is its emulator in a
process of its own (`bench/upstream.py`), whose `CreateClock` stamps each create when it reaches that process
(CLOCK_MONOTONIC, which the benchmark reads too) and ties it to its job (Seedancee2 echoes `metadata.reelay_job_id`;
MindVideo's Idempotency-Key is the job id). Emulated tasks never finish during a phase.

- i. `POST /v1/jobs` for `seedancee2/pro` at 100/s: the latency runs from the 202 reaching the caller to the
  create reaching the Seedancee2 emulator. The dispatcher may send the create before the 202's bytes are back
  at the caller; such a job counts as 0 ms (`dispatched_before_answer` says how many).
- i2. A route whose first candidate (`seedancee2/fast`) refuses every create (the emulator's `refuse_creates`:
  400 `invalid_request`, a definitive refusal, never retried) and whose second is MindVideo's model. The latency
  runs from the refused create reaching the first emulator to the job's create reaching the second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bench.common import CpuMeter, Process, http, ms, percentile, say
from bench.sse import Sender
from bench.target import JOB_BODY, Database, Key, reelay, reelay_env, upstream
from bench.upstream import CREATES_PATH, KNOBS, Create
from sandbox import SANDBOXES, SandboxKnobs
from tests.ports import free_ports

DISPATCH_RATE = 100  # jobs per second
DISPATCH_JOBS = 2_000  # 20 s
FAILOVER_RATE = 20
FAILOVER_JOBS = 400  # 20 s
WARMUP_JOBS = 20
ARRIVAL_TIMEOUT = 30.0  # after the last job; a create later than this stops the run
ROUTE = "bench-fast"
FIRST, SECOND = "seedancee2/fast", "mindvideo/doubao-seedance-2-0-fast"
ROUTES = {ROUTE: {"strategy": "priority", "candidates": [FIRST, SECOND]}}
ROUTE_BODY = msgspec.json.encode(
    {"model": ROUTE, "input": {"prompt": "a red kite over a grey sea, slow pan", "duration": 5, "resolution": "720p"}}
)


def job_request(key: Key, body: bytes) -> bytes:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key.secret}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def creates(provider: Process) -> list[Create]:
    return msgspec.json.decode(await http(provider.port, "GET", CREATES_PATH), type=list[Create])


async def submit_paced(sender: Sender, request: bytes, count: int, rate: float) -> dict[str, float]:
    """`count` creates at a steady `rate`, not waiting for answers; when each job's 202 came back, by job id.

    Every create must be answered 202, or the run stops.
    """
    answered: dict[str, float] = {}
    refused: list[str] = []

    async def one() -> None:
        status, body = await sender.exchange(request)
        at = time.monotonic()
        if status != 202:
            refused.append(f"{status} {body[:300]!r}")
            return
        answered[msgspec.json.decode(body)["id"]] = at

    begin = time.monotonic()
    pending = []
    for i in range(count):
        delay = begin + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one()))
    await asyncio.gather(*pending)
    if refused:
        raise RuntimeError(f"POST /v1/jobs answered {len(refused)} times other than 202, first: {refused[0]}")
    return answered


async def wait_for_creates(
    provider: Process, jobs: set[str], what: str, accept: Callable[[Create], bool]
) -> dict[str, float]:
    """The first create each job got at `provider` that `accept` takes, once every job has one."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        first: dict[str, float] = {}
        for create in await creates(provider):
            if create.job_id in jobs and create.job_id not in first and accept(create):
                first[create.job_id] = create.at
        if len(first) == len(jobs):
            return first
        if time.monotonic() >= deadline:
            raise RuntimeError(f"not within {ARRIVAL_TIMEOUT:g} s: {what} ({len(first)} of {len(jobs)})")
        await asyncio.sleep(0.1)


def _latencies(latencies: list[float]) -> dict[str, float]:
    return {
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(max(latencies)),
    }


# -- i: dispatch latency ---------------------------------------------------------------------------


def dispatch(work: Path) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'dispatch.db'}")
    (key,) = asyncio.run(database.keys(1))
    with upstream(work / "upstream-dispatch.log") as provider:
        env = reelay_env(database.url, free_ports(1), upstream_url=provider.url)
        with reelay(env, work / "reelay-dispatch.log") as server:
            result = asyncio.run(_dispatch(server, provider, key))
    say(
        f"  i. POST /v1/jobs 202 -> the provider has the create, {DISPATCH_RATE}/s: p50 {result['latency_p50_ms']:.2f}"
        f" ms, p99 {result['latency_p99_ms']:.2f} ms, max {result['latency_max_ms']:.1f} ms"
    )
    return result


async def _dispatch(server: Process, provider: Process, key: Key) -> dict[str, Any]:
    sender = Sender(server.port)
    request = job_request(key, JOB_BODY)
    warm = await submit_paced(sender, request, WARMUP_JOBS, DISPATCH_RATE)
    await wait_for_creates(provider, set(warm), "the warm-up creates", lambda c: c.status == 200)
    meter = CpuMeter(server.pid)
    answered = await submit_paced(sender, request, DISPATCH_JOBS, DISPATCH_RATE)
    created = await wait_for_creates(provider, set(answered), "a create for every job", lambda c: c.status == 200)
    cpu = meter.read()
    sender.close()
    raw = [created[job] - answered[job] for job in answered]
    return {
        "jobs": len(raw),
        "job_rate": DISPATCH_RATE,
        **_latencies([max(0.0, x) for x in raw]),
        "dispatched_before_answer": sum(1 for x in raw if x < 0),
        **cpu,
    }


# -- i2: failover latency --------------------------------------------------------------------------


def failover(work: Path) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'failover.db'}")
    (key,) = asyncio.run(database.keys(1))
    mindvideo = SANDBOXES["mindvideo"]
    with upstream(work / "upstream-first.log") as first, upstream(work / "upstream-second.log", "mindvideo") as second:
        refusing = msgspec.structs.replace(KNOBS, refuse_creates=True)
        answer = asyncio.run(http(first.port, "PUT", "/_sandbox/knobs", msgspec.json.encode(refusing)))
        if msgspec.json.decode(answer, type=SandboxKnobs) != refusing:
            raise RuntimeError(f"the first candidate's emulator did not take the knobs: {answer[:300]!r}")
        env = reelay_env(
            database.url,
            free_ports(1),
            upstream_url=first.url,
            REELAY_MINDVIDEO_BASE_URL=second.url,
            REELAY_MINDVIDEO_API_KEY=mindvideo.api_key,
            REELAY_ROUTES=json.dumps(ROUTES),
        )
        with reelay(env, work / "reelay-failover.log") as server:
            result = asyncio.run(_failover(server, first, second, key))
    say(
        f"  i2. first candidate refuses -> the second has the create, {FAILOVER_RATE}/s: "
        f"p50 {result['latency_p50_ms']:.2f} ms, p99 {result['latency_p99_ms']:.2f} ms, "
        f"max {result['latency_max_ms']:.1f} ms"
    )
    return result


async def _failover(server: Process, first: Process, second: Process, key: Key) -> dict[str, Any]:
    sender = Sender(server.port)
    request = job_request(key, ROUTE_BODY)
    warm = await submit_paced(sender, request, WARMUP_JOBS, FAILOVER_RATE)
    await wait_for_creates(second, set(warm), "the warm-up creates at the second candidate", lambda c: c.status == 200)
    meter = CpuMeter(server.pid)
    jobs = set(await submit_paced(sender, request, FAILOVER_JOBS, FAILOVER_RATE))
    moved = await wait_for_creates(second, jobs, "a create at the second candidate", lambda c: c.status == 200)
    cpu = meter.read()
    sender.close()
    refused = await wait_for_creates(first, jobs, "a refused create at the first candidate", lambda c: c.status == 400)
    return {
        "jobs": len(jobs),
        "job_rate": FAILOVER_RATE,
        "route": f"{FIRST} (refuse_creates) -> {SECOND}",
        **_latencies([moved[job] - refused[job] for job in jobs]),
        **cpu,
    }
