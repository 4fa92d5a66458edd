"""Readers that never read, on a real `reelay serve` holding jobs with the largest allowed inline input: the
server's memory (VmRSS) grows little while they stall and comes back down once they close."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from service.providers import ADAPTERS
from service.settings import Settings
from tests.harness import data_uri, serving, url_of
from tests.ports import bind, free_ports
from tests.processes import create_key, reelay_env, reelay_serve, wait_ready

JOBS = 40
STREAMS = 12
LISTS = 15
MiB = 1024 * 1024
GROWTH_BOUND = 50 * MiB  # while the readers stall
SETTLED_BOUND = 20 * MiB  # once they are gone
SAMPLE_SECONDS = 3.0


def rss(pid: int) -> int:
    """The process's resident memory in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def peak_rss(pid: int, seconds: float) -> int:
    """The highest VmRSS seen in `seconds` of sampling."""
    peak, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        await asyncio.sleep(0.1)
    return peak


def stalled(port: int, request: bytes) -> socket.socket:
    """A connection that sends `request` and then never reads; returns once the answer has begun."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep what the client's kernel takes small
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    sock.settimeout(20)
    assert sock.recv(1, socket.MSG_PEEK) == b"H", "the server did not start answering"
    return sock


async def stall(port: int, request: bytes, count: int) -> list[socket.socket]:
    return [await asyncio.to_thread(stalled, port, request) for _ in range(count)]


async def test_stalled_replays_and_lists_of_the_largest_inline_jobs_pin_little_memory(tmp_path: Path) -> None:
    sandbox_sock, port = bind(), free_ports(1)
    env = reelay_env(tmp_path, port, {"seedancee2": url_of(sandbox_sock)})
    cap = Settings.from_env(env, adapters=ADAPTERS).max_inline_bytes
    url = f"http://127.0.0.1:{port}"
    key = create_key(env)
    headers = {"Authorization": f"Bearer {key}"}
    replay = f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nLast-Event-ID: 0\r\n\r\n".encode()
    listing = f"GET /v1/jobs?limit=100 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    emulator = SANDBOXES["seedancee2"].build(SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2))
    database = tmp_path / "reelay.db"

    async with serving(emulator, sandbox_sock), httpx.AsyncClient(timeout=30) as client:
        with reelay_serve(env, tmp_path / "reelay.log") as process:
            await wait_ready(client, url, process)
            for n in range(JOBS):
                body = {
                    "model": "seedancee2/mini",
                    "input": {"prompt": f"job {n}", "reference_images": [data_uri(cap)]},
                }
                created = await client.post(f"{url}/v1/jobs", headers=headers, json=body)
                assert created.status_code == 202, created.text
            # One replay read to the end: every job has finished, and whatever a replay warms up is warm.
            succeeded = 0
            async with (
                asyncio.timeout(60),
                client.stream("GET", f"{url}/v1/events", headers={**headers, "Last-Event-ID": "0"}) as stream,
            ):
                async for line in stream.aiter_lines():
                    succeeded += line == "event: job.succeeded"
                    if succeeded == JOBS:
                        break
            db_bytes = sum(p.stat().st_size for p in tmp_path.glob("reelay.db*"))
            figures = {}
            for name, request, count in (("replays", replay, STREAMS), ("lists", listing, LISTS)):
                baseline = rss(process.pid)
                readers = await stall(port, request, count)
                stalled_peak = await peak_rss(process.pid, SAMPLE_SECONDS)
                for sock in readers:
                    sock.close()
                await asyncio.sleep(SAMPLE_SECONDS)  # the server notices the closed connections and lets go
                settled = rss(process.pid)
                figures[name] = (baseline, stalled_peak, settled)
                print(
                    f"\nINLINE RSS {count} stalled {name} of {JOBS} jobs with {cap} B inline each: "
                    f"baseline {baseline / MiB:.1f} MiB, stalled peak {stalled_peak / MiB:.1f} MiB "
                    f"(+{(stalled_peak - baseline) / MiB:.1f}), after close {settled / MiB:.1f} MiB "
                    f"(+{(settled - baseline) / MiB:.1f})"
                )
    print(f"INLINE DB {JOBS} jobs with {cap} B inline each: {db_bytes / MiB:.1f} MiB ({database.name} and its WAL)")
    for name, (baseline, stalled_peak, settled) in figures.items():
        assert stalled_peak - baseline <= GROWTH_BOUND, f"{name}: +{(stalled_peak - baseline) / MiB:.1f} MiB stalled"
        assert settled - baseline <= SETTLED_BOUND, f"{name}: +{(settled - baseline) / MiB:.1f} MiB after close"
