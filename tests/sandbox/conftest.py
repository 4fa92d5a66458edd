"""Helpers the emulator contract tests share: an in-process client, a scripted callback receiver, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
from litestar import Litestar


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (ASGITransport does not) and talk to it in-process."""
    async with (
        app.lifespan(),
        # Litestar's precise ASGI types do not match httpx's loose ones; the app is a plain ASGI callable.
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
            # The emulators ignore the host; every test talks to one app only.
            base_url="https://sandbox.test",
        ) as client,
    ):
        yield client


class Receiver:
    """A callback endpoint behind httpx.MockTransport, answering with scripted status codes."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.requests: list[httpx.Request] = []
        self._statuses = list(statuses)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return httpx.Response(self._statuses.pop(0) if self._statuses else 200)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def arrived(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.requests) >= count

    def bodies(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(request.content) for request in self.requests]


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 3.0) -> None:
    """Poll `check` (plain or async) until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
