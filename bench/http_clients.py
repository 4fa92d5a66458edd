"""`python -m bench.http_clients [--requests 3000] [--concurrency 16] [--rounds 3]`: the CPU a status check costs
Reelay's side of the wire with each candidate HTTP client; prints only.

imini's emulator runs in a process of its own (`bench/upstream.py`, loopback, tasks that stay running), so only the
client's CPU is counted: this process's user + system time over a run of GETs of a task's status (a realistic JSON
answer, bearer auth, keep-alive), `--concurrency` in flight, on uvloop as Reelay runs. Each client is warmed up
first, and the clients take turns over `--rounds` rounds; the median round is printed.

- httpx default: `httpx.AsyncClient` as Reelay made it (httpcore's pool, anyio, h11).
- httpx + httpcore on plain asyncio streams: httpcore's pool with a network backend that skips anyio's streams.
- httpx + httpx-aiohttp: PyPI's aiohttp transport for httpx (`pip install httpx-aiohttp`; skipped without it).
- httpx + service.transport.AiohttpTransport: Reelay's own thin aiohttp transport.
- aiohttp: a bare `aiohttp.ClientSession`, the floor for any transport on aiohttp.
- "imini adapter" rows: the whole status check as the poller makes it (`Imini.fetch`: the call, JSON, the Report).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpcore
import httpx
import msgspec

from bench.common import ROOT
from bench.target import upstream
from sandbox import SANDBOXES, SandboxKnobs
from service.providers.imini import Imini
from service.server import run
from service.settings import ProviderSettings
from service.transport import AiohttpTransport

API_KEY = SANDBOXES["imini"].api_key
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TASKS = 64  # tasks polled in turn
WARMUP = 300  # requests per client before each measured run
# Reelay's upstream client: httpx.Timeout(REELAY_UPSTREAM_TIMEOUT_SECONDS's default, connect=10.0) and these limits.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

Get = Callable[[str], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]
Opener = Callable[[], Awaitable[tuple[Get, Close]]]


@dataclass
class Client:
    """One candidate: how to open it, which gives one status check with it and how to close it."""

    name: str
    open: Opener


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's network stream over asyncio's own streams, without anyio (plain TCP only)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._writer.write(buffer)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()

    def get_extra_info(self, info: str) -> Any:
        return self._writer.get_extra_info("socket") if info == "socket" else None


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def httpx_client(transport: Callable[[], httpx.AsyncBaseTransport | None]) -> Opener:
    """An httpx client as Reelay makes it, over a new `transport()` each time it is opened."""

    async def open_() -> tuple[Get, Close]:
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, transport=transport())

        async def get(url: str) -> Any:
            response = await client.get(url, headers=AUTH)
            assert response.status_code == 200, response.status_code
            return msgspec.json.decode(response.content)

        return get, client.aclose

    return open_


def httpcore_asyncio() -> httpx.AsyncBaseTransport:
    transport = httpx.AsyncHTTPTransport(limits=LIMITS)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl.create_default_context(),
        max_connections=LIMITS.max_connections,
        max_keepalive_connections=LIMITS.max_keepalive_connections,
        keepalive_expiry=LIMITS.keepalive_expiry,
        network_backend=_AsyncioBackend(),
    )
    return transport


async def open_aiohttp() -> tuple[Get, Close]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=60.0),
    )

    async def get(url: str) -> Any:
        async with session.get(url, headers=AUTH) as response:
            assert response.status == 200, response.status
            return msgspec.json.decode(await response.read())

    return get, session.close


def adapter(base_url: str, transport: Callable[[], httpx.AsyncBaseTransport | None]) -> Opener:
    """The imini adapter's status check over an httpx client with `transport`."""

    async def open_() -> tuple[Get, Close]:
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, transport=transport())
        imini = Imini(ProviderSettings(base_url=base_url, api_key=API_KEY), client)
        prefix = base_url + "/v1/videos/tasks/"

        async def get(url: str) -> Any:
            return await imini.fetch(url.removeprefix(prefix))

        return get, client.aclose

    return open_


def candidates(base_url: str) -> list[Client]:
    found = [
        Client("httpx default", httpx_client(lambda: None)),
        Client("httpx + httpcore on asyncio streams", httpx_client(httpcore_asyncio)),
    ]
    try:
        from httpx_aiohttp import AiohttpTransport as PyPIAiohttpTransport
    except ImportError:
        print("httpx-aiohttp not installed (pip install httpx-aiohttp): skipped")
    else:
        found.append(Client("httpx + httpx-aiohttp", httpx_client(lambda: PyPIAiohttpTransport(limits=LIMITS))))
    found += [
        Client("httpx + service.transport", httpx_client(lambda: AiohttpTransport(limits=LIMITS))),
        Client("aiohttp (bare)", open_aiohttp),
        Client("imini adapter, httpx default", adapter(base_url, lambda: None)),
        Client("imini adapter, httpx + service.transport", adapter(base_url, lambda: AiohttpTransport(limits=LIMITS))),
    ]
    return found


async def measure(client: Client, urls: list[str], count: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per request, requests per second) over `count` requests after a warm-up."""
    get, close = await client.open()
    try:
        for i in range(WARMUP):
            await get(urls[i % len(urls)])
        left = count

        async def worker(offset: int) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await get(urls[(left + offset) % len(urls)])

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await close()
    return 1e6 * cpu / count, count / wall


async def create_tasks(base_url: str) -> list[str]:
    async with httpx.AsyncClient() as client:
        knobs = SandboxKnobs(processing_after_s=1.0, complete_after_s=3600.0)
        await client.put(base_url + "/_sandbox/knobs", content=msgspec.json.encode(knobs))
        urls = []
        for i in range(TASKS):
            body = {"model": "doubao/seedance-2.0", "prompt": f"a red kite over a grey sea, take {i}"}
            answer = await client.post(base_url + "/v1/videos/generate", json=body, headers=AUTH)
            answer.raise_for_status()
            urls.append(f"{base_url}/v1/videos/tasks/{answer.json()['task_id']}")
        await asyncio.sleep(1.5)  # past processing_after_s: every answer is a running task's
        sample = await client.get(urls[0], headers=AUTH)
        print(f"status answer: {len(sample.content)} bytes, {sample.content[:120]!r}...")
        return urls


async def main(args: argparse.Namespace, base_url: str) -> None:
    urls = await create_tasks(base_url)
    clients = candidates(base_url)
    cpu: dict[str, list[float]] = {c.name: [] for c in clients}
    rate: dict[str, list[float]] = {c.name: [] for c in clients}
    for round_ in range(args.rounds):
        for client in clients:
            per_request, per_second = await measure(client, urls, args.requests, args.concurrency)
            cpu[client.name].append(per_request)
            rate[client.name].append(per_second)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    base = statistics.median(cpu[clients[0].name])
    print(f"\n{args.requests} GETs per round, {args.concurrency} in flight, median of {args.rounds} rounds")
    print(f"{'client':<44} {'CPU µs/GET':>10} {'vs httpx':>9} {'GET/s':>7}  rounds (µs)")
    for client in clients:
        median = statistics.median(cpu[client.name])
        rounds = " ".join(f"{v:.0f}" for v in cpu[client.name])
        print(
            f"{client.name:<44} {median:10.0f} {median / base - 1:+9.0%} "
            f"{statistics.median(rate[client.name]):7.0f}  {rounds}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    with upstream(ROOT / "var" / "http-clients-upstream.log", "imini") as emulator:
        run(main(arguments, emulator.url))
