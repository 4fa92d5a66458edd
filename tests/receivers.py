"""Callers' webhook receivers for tests, on their own loopback ports: one that records each delivery and answers as
the test scripts it, and a black hole that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tests.harness import serving, url_of
from tests.ports import bind

Answer = tuple[int, dict[str, str], bytes]
OK: Answer = (200, {}, b"ok")


@dataclass
class Got:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # unix time it arrived

    @property
    def data(self) -> Any:
        return msgspec.json.decode(self.body)["data"]


@dataclass
class Receiver:
    """An ASGI app that records every request and answers with `answers` in turn, then 200 (or `endless`: 200 with
    a body that never ends, until the client goes), each after `delay` seconds."""

    answers: list[Answer] = field(default_factory=list)
    endless: bool = False
    delay: float = 0.0  # seconds before each answer
    got: list[Got] = field(default_factory=list)

    @classmethod
    def scripted(cls, answers: Iterable[Answer] = (), *, endless: bool = False, delay: float = 0.0) -> Receiver:
        return cls(answers=list(answers), endless=endless, delay=delay)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Got]:
        """The requests once there are at least `count`."""
        async with asyncio.timeout(timeout):
            while len(self.got) < count:
                await asyncio.sleep(0.01)
        return self.got

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender went (killed) before its request was whole: nothing arrived
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        self.got.append(Got(path=scope["path"], headers=headers, body=bytes(body), at=time.time()))
        status, extra, content = self.answers.pop(0) if self.answers else OK
        if self.delay:
            await asyncio.sleep(self.delay)
        raw_headers = [(name.encode(), value.encode()) for name, value in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        if not self.endless:
            await send({"type": "http.response.body", "body": content})
            return
        gone = asyncio.create_task(receive())  # http.disconnect, once the client hangs up
        chunk = b"x" * 65536
        while not gone.done():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.001)


@asynccontextmanager
async def receiving(receiver: Receiver, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve `receiver` (on `sock`, bound earlier, if given); yields its base URL."""
    sock = sock or bind()
    async with serving(receiver, sock):
        yield url_of(sock)


@dataclass
class BlackHole:
    """Accepts connections and reads requests, never answers."""

    url: str = ""
    connections: int = 0


@asynccontextmanager
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hole.connections += 1
        writers.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    hole.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with server:
            yield hole
    finally:
        for writer in writers:
            writer.close()
