"""Phases a, b and c: request rates under wrk, side by side with the bare framework's ceiling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BIN, Process, counter, http, say, spawn
from bench.load import run_wrk, write_requests
from bench.target import (
    JOB_BODY,
    WEBHOOK_PATH,
    Database,
    SeededJob,
    callback_body,
    reelay,
    reelay_env,
    upstream,
    webhook_headers,
)
from tests.ports import free_ports

CONNECTIONS = 32
WARMUP_SECONDS = 2.0


def _webhooks(jobs: list[SeededJob]) -> list[tuple[dict[str, str], bytes]]:
    stamp = int(time.time())
    return [(webhook_headers(body, stamp), body) for body in map(callback_body, jobs)]


def ceiling(work: Path, seconds: float) -> dict[str, Any]:
    """a. The bare framework on the same server code, fed the same signed webhook bytes as phase b."""
    fake = [SeededJob(f"job_{i:026d}", f"tsk_{i:020d}") for i in range(1000)]
    requests = work / "ceiling.tsv"
    write_requests(requests, _webhooks(fake))
    port = free_ports(1)
    with spawn([str(BIN / "python"), "-m", "bench.noop", str(port)], {}, work / "noop.log", port) as server:
        url = f"{server.url}{WEBHOOK_PATH}"
        run_wrk(url, requests, duration=WARMUP_SECONDS, connections=CONNECTIONS)
        result = run_wrk(url, requests, duration=seconds, connections=CONNECTIONS, server_pid=server.pid)
    say(f"  a. ceiling: {result['per_second']:,.0f} no-op POST/s, p99 {result['p99_ms']:.2f} ms")
    return result


def webhooks(
    work: Path, seconds: float, expected_rate: float, synchronous: str = "FULL", profile: Path | None = None
) -> dict[str, Any]:
    """b. Signed Seedancee2 completions: verify, durable state change, event appended, fan-out."""
    database = Database(f"sqlite:///{work / f'webhooks-{synchronous.lower()}.db'}")
    started = time.perf_counter()
    (key,) = asyncio.run(database.keys(1))
    warm = asyncio.run(database.submitted_jobs(key, int(expected_rate * WARMUP_SECONDS * 1.5)))
    # Enough jobs that no callback repeats: a repeat is a cheap duplicate, not a state change.
    jobs = asyncio.run(database.submitted_jobs(key, int(expected_rate * seconds * 1.5)))
    say(f"     seeded {len(warm) + len(jobs):,} submitted jobs in {time.perf_counter() - started:.1f} s")
    warm_file, main_file = work / "webhooks-warm.tsv", work / "webhooks.tsv"
    write_requests(warm_file, _webhooks(warm))
    write_requests(main_file, _webhooks(jobs))
    env = reelay_env(database.url, free_ports(1), REELAY_SQLITE_SYNCHRONOUS=synchronous)
    with reelay(env, work / f"reelay-webhooks-{synchronous.lower()}.log") as server:
        result, grew = _measured(server, f"{server.url}{WEBHOOK_PATH}", warm_file, main_file, seconds, profile)
    applied = grew("reelay_webhooks_total", result="applied")
    result["applied"] = int(applied)
    result["seeded_jobs"] = len(jobs)
    result["sqlite_synchronous"] = synchronous
    if result["requests"] > len(jobs):
        result["warning"] = "wrk sent more callbacks than jobs: repeats were cheap duplicates; raise expected_rate"
    say(
        f"  b. webhooks (synchronous={synchronous}): {result['per_second']:,.0f}/s, p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms; {applied:,.0f} state changes of {result['requests']:,} callbacks"
    )
    return result


def _measured(
    server: Process, url: str, warm_file: Path, main_file: Path, seconds: float, profile: Path | None
) -> tuple[dict[str, Any], Callable[..., float]]:
    """Warm up, then measure; also returns how much a server counter grew over the measured run."""
    run_wrk(url, warm_file, duration=WARMUP_SECONDS, connections=CONNECTIONS)
    before = asyncio.run(http(server.port, "GET", "/metrics"))
    result = run_wrk(url, main_file, duration=seconds, connections=CONNECTIONS, server_pid=server.pid, profile=profile)
    after = asyncio.run(http(server.port, "GET", "/metrics"))

    def grew(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    return result, grew


def submissions(work: Path, seconds: float, profile: Path | None = None) -> dict[str, Any]:
    """c. POST /v1/jobs -> 202, with the dispatcher forwarding each job to the Seedancee2 emulator meanwhile."""
    database = Database(f"sqlite:///{work / 'submissions.db'}")
    (key,) = asyncio.run(database.keys(1))
    requests = work / "jobs.tsv"
    headers = {"Authorization": f"Bearer {key.secret}", "Content-Type": "application/json"}
    write_requests(requests, [(headers, JOB_BODY)])
    with upstream(work / "upstream.log") as provider:
        env = reelay_env(database.url, free_ports(1), upstream_url=provider.url)
        with reelay(env, work / "reelay-submissions.log") as server:
            result, grew = _measured(server, f"{server.url}/v1/jobs", requests, requests, seconds, profile)
    result["accepted"] = int(grew("reelay_http_requests_total", route="/v1/jobs", status="202"))
    say(
        f"  c. submissions: {result['per_second']:,.0f} 202/s, p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms"
    )
    return result
