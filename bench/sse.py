"""A lean SSE client for thousands of connections in one process: one asyncio Protocol per stream.

It decodes HTTP/1.1 chunked framing incrementally and records, per stream, the event ids it saw and when.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from bench.common import CpuMeter, ms, percentile, wait_until


class _Data(msgspec.Struct):
    job: _Job


class _Job(msgspec.Struct):
    id: str


_decode_data = msgspec.json.Decoder(_Data).decode


class Stream(asyncio.Protocol):
    """One `GET /v1/events` connection. `ready` resolves once the server has subscribed it (first frame)."""

    def __init__(self, request: bytes, *, keep_jobs: bool = False) -> None:
        self.request = request
        self.keep_jobs = keep_jobs
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.ids: list[int] = []
        self.arrivals: list[float] = []  # perf_counter() when each event's bytes arrived
        self.jobs: list[str] = []  # job id of each event, when keep_jobs
        self.pings = 0
        self._head = b""
        self._raw = b""  # chunked bytes not yet decoded
        self._text = b""  # decoded bytes not yet split into frames
        self._waiting_for: tuple[int, asyncio.Future[None]] | None = None

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"stream closed before its first frame (status {self.status})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def wait_for_id(self, event_id: int) -> asyncio.Future[None]:
        """Resolves when an event with this id or a later one has arrived."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.ids and self.ids[-1] >= event_id:
            future.set_result(None)
        else:
            self._waiting_for = (event_id, future)
        return future

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.status is None:
            self._head += data
            head, sep, rest = self._head.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"stream refused with HTTP {self.status}"))
                self.close()
                return
            data = rest
        self._raw += data
        self._dechunk()
        while True:
            frame, sep, rest = self._text.partition(b"\n\n")
            if not sep:
                break
            self._text = rest
            self._frame(frame, now)

    def _dechunk(self) -> None:
        raw = self._raw
        out = []
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(raw[:line_end].split(b";", 1)[0], 16)
            if len(raw) < line_end + 2 + size + 2:
                break
            out.append(raw[line_end + 2 : line_end + 2 + size])
            raw = raw[line_end + 4 + size :]
        self._raw = raw
        if out:
            self._text += b"".join(out)

    def _frame(self, frame: bytes, now: float) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        if frame.startswith(b": ping"):
            self.pings += 1
            return
        if not frame.startswith(b"id: "):
            return  # retry hints and comments
        lines = frame.split(b"\n")
        event_id = int(lines[0][4:])
        self.ids.append(event_id)
        self.arrivals.append(now)
        if self.keep_jobs:
            data = next(line for line in lines if line.startswith(b"data: "))
            self.jobs.append(_decode_data(data[6:]).job.id)
        waiting = self._waiting_for
        if waiting is not None and event_id >= waiting[0] and not waiting[1].done():
            waiting[1].set_result(None)
            self._waiting_for = None


def events_request(key: str, last_event_id: int | None = None) -> bytes:
    resume = f"last-event-id: {last_event_id}\r\n" if last_event_id is not None else ""
    return (
        f"GET /v1/events HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n"
        f"authorization: Bearer {key}\r\n{resume}\r\n"
    ).encode()


async def open_streams(
    port: int, requests: Iterable[bytes], *, concurrency: int = 200, keep_jobs: bool = False
) -> list[Stream]:
    """Open one stream per request, `concurrency` handshakes at a time; returns once every one is subscribed."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(request: bytes) -> Stream:
        async with gate:
            _, stream = await loop.create_connection(lambda: Stream(request, keep_jobs=keep_jobs), "127.0.0.1", port)
            await stream.ready
            return stream

    return list(await asyncio.gather(*(one(r) for r in requests)))


async def close_streams(streams: Iterable[Stream]) -> None:
    streams = list(streams)
    for stream in streams:
        stream.close()
    await asyncio.gather(*(s.closed for s in streams))


class Sender:
    """Keep-alive HTTP/1.1 connections for pre-built requests; `send` returns the status once answered."""

    IDLE_SECONDS = 2.0  # under uvicorn's 5 s keep-alive: a connection reused is one the server still holds

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def send(self, request: bytes) -> int:
        return (await self.exchange(request))[0]

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; its status and body once answered."""
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.IDLE_SECONDS:
                break
            writer.close()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self._idle.append((reader, writer, time.monotonic()))
        return int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def paced(sender: Sender, requests: dict[str, bytes], rate: float) -> tuple[dict[str, float], list[int]]:
    """Send each request (by job id) at a steady `rate` per second, not waiting for answers before the next.

    Returns when each request was written (perf_counter) and every answer's status.
    """
    sent_at: dict[str, float] = {}
    statuses: list[int] = []

    async def send(job_id: str, request: bytes) -> None:
        sent_at[job_id] = time.perf_counter()
        statuses.append(await sender.send(request))

    begin = time.perf_counter()
    pending = []
    for i, (job_id, request) in enumerate(requests.items()):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(send(job_id, request)))
    await asyncio.gather(*pending)
    return sent_at, statuses


async def webhook_latency(
    watcher: Stream, sender: Sender, requests: dict[str, bytes], rate: float, server_pid: int
) -> dict[str, Any]:
    """Webhooks (by job id) paced at `rate`; the time from writing each to its event's arrival at `watcher`.

    Every webhook must be answered 2xx and every event must arrive, or the run stops: percentiles over the events
    that did arrive would hide the ones that did not.
    """
    before = len(watcher.ids)
    meter = CpuMeter(server_pid)
    sent_at, statuses = await paced(sender, requests, rate)
    refused = sorted({s for s in statuses if s >= 300})
    if refused:
        raise RuntimeError(f"webhooks answered {refused}")
    expected = f"{len(requests)} events at the subscriber"
    await wait_until(lambda: len(watcher.ids) - before >= len(requests), 10, expected)
    cpu = meter.read()
    arrived = zip(watcher.jobs[before:], watcher.arrivals[before:], strict=True)
    latencies = [arrival - sent_at[job_id] for job_id, arrival in arrived]
    return {
        "webhooks": len(requests),
        "webhook_rate": rate,
        "events_received": len(latencies),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(max(latencies)),
        **cpu,
    }
