"""`python -m bench.receiver CONTROL DELIVERY HOLE`: the callers' webhook receivers for phases h, h2 and h3.

Three loopback listeners in one process of its own, on uvloop, each a raw asyncio Protocol speaking HTTP/1.1
with keep-alive, so the receiver costs next to nothing and the phases measure Reelay:
- DELIVERY answers every request 200 at once and records, for each delivery, its path (which endpoint), its
  `webhook-id`, the job id in its body's `data` and when its last byte arrived (`time.perf_counter()`, which is
  CLOCK_MONOTONIC: the same clock as the bench process's);
- HOLE accepts connections and reads them but never answers (a black-holed receiver);
- CONTROL stays up throughout: `GET /count` (deliveries answered 200, distinct by `webhook-id`), `GET /arrivals`
  (every record, JSON), `POST /down` (closes DELIVERY's listener and its connections: connections are refused),
  `POST /up` (listens again on the same port).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from typing import cast

import msgspec
import uvloop

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
MAX_HEAD = 64 * 1024


class _Job(msgspec.Struct):
    id: str


class _Data(msgspec.Struct):
    job: _Job | None = None


class _Body(msgspec.Struct):
    data: _Data


_decode_body = msgspec.json.Decoder(_Body).decode


class Arrival(msgspec.Struct, array_like=True):
    path: str
    webhook_id: str
    job_id: str | None
    at: float  # perf_counter() when the request's last byte arrived


class Request(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Http(asyncio.Protocol):
    """HTTP/1.1 requests with Content-Length bodies, keep-alive and pipelining; `handle` gives each answer."""

    def __init__(self, handle: Callable[[Request, float], bytes | None], open_set: set[Http]) -> None:
        self.handle = handle
        self.open_set = open_set
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's transports are not asyncio's subclasses
        self.open_set.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_set.discard(self)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.transport.abort()
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            answer = self.handle(Request(method, path, headers, body), now)
            if answer is None:
                continue  # a black hole: never answers
            self.transport.write(answer)
            if headers.get("connection", "").lower() == "close":
                self.transport.close()
                return

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Receiver:
    def __init__(self, delivery_port: int) -> None:
        self.delivery_port = delivery_port
        self.arrivals: list[Arrival] = []
        self.delivered: set[str] = set()  # webhook-ids answered 200
        self.connections: set[Http] = set()
        self.holes: set[Http] = set()
        self.controls: set[Http] = set()
        self.listening: socket.socket | None = None
        self.serving: asyncio.Task[asyncio.Server] | None = None

    def deliver(self, request: Request, now: float) -> bytes:
        webhook_id = request.headers.get("webhook-id", "")
        try:
            job = _decode_body(request.body).data.job
        except msgspec.DecodeError:
            job = None
        self.arrivals.append(Arrival(request.path, webhook_id, job.id if job else None, now))
        self.delivered.add(webhook_id)
        return OK

    def control(self, request: Request, now: float) -> bytes:
        if request.path == "/count":
            body = msgspec.json.encode({"delivered": len(self.delivered), "arrivals": len(self.arrivals)})
        elif request.path == "/arrivals":
            body = msgspec.json.encode(self.arrivals)
        elif request.path == "/down" and request.method == "POST":
            self.down()
            body = b"{}"
        elif request.path == "/up" and request.method == "POST":
            self.up()
            body = b"{}"
        else:
            body = b'{"receiver": "bench"}'
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    def up(self) -> None:
        """Listening before it returns: connections made until the server accepts them wait in the backlog."""
        if self.listening is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.delivery_port))
            sock.listen(4096)
            self.listening = sock
            loop = asyncio.get_running_loop()
            self.serving = loop.create_task(loop.create_server(lambda: Http(self.deliver, self.connections), sock=sock))

    def down(self) -> None:
        """Connections refused from now on, and every open one reset."""
        if self.serving is not None:
            if self.serving.done():
                self.serving.result().close()
            else:
                self.serving.cancel()
            self.serving = None
        if self.listening is not None:
            self.listening.close()
            self.listening = None
        for connection in list(self.connections):
            connection.abort()


async def main(control_port: int, delivery_port: int, hole_port: int) -> None:
    receiver = Receiver(delivery_port)
    loop = asyncio.get_running_loop()
    receiver.up()
    await loop.create_server(lambda: Http(lambda r, t: None, receiver.holes), "127.0.0.1", hole_port)
    await loop.create_server(lambda: Http(receiver.control, receiver.controls), "127.0.0.1", control_port)
    await asyncio.Event().wait()  # until SIGTERM


if __name__ == "__main__":
    uvloop.run(main(*(int(arg) for arg in sys.argv[1:4])))
