"""Real servers on loopback for tests: Reelay and the sandbox emulators, each on its own port."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn
from httpx_sse import aconnect_sse
from litestar import Litestar

from sandbox import SANDBOXES, SandboxKnobs
from service.app import create_app
from service.circuits import ProviderHealth
from service.dev import emulator_settings
from service.egress import Resolver, system_resolver
from service.keys import create_key
from service.server import ConnectionLimits, make_server
from service.settings import Settings
from service.wire import encode_job
from storage import Store, create_store
from tests.ports import bind


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def serving(
    app: Any, sock: socket.socket, limits: ConnectionLimits | None = None
) -> AsyncIterator[uvicorn.Server]:
    server = make_server(app, sock, graceful_seconds=2, limits=limits)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    # No asset store unless a test asks for one (`assets=`): no archiving, no job.archived, nothing under ./var.
    base = Settings(database_url=f"sqlite:///{tmp_path / 'reelay.db'}", sqlite_synchronous="NORMAL", assets="off")
    return msgspec.structs.replace(base, **overrides)


@dataclass
class Stack:
    """A running Reelay wired to running emulators, with an API key and a client for it."""

    app: Litestar
    url: str
    key: str
    client: httpx.AsyncClient
    sandbox_urls: dict[str, str]
    settings: Settings
    store: Store  # the app's store: its lifespan opens it, `stack` closes it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def hub(self) -> Any:
        return self.app.state.ctx.hub

    async def submit(self, model: str = "seedancee2/pro", **input: Any) -> dict[str, Any]:
        body = {"model": model, "input": {"prompt": "a drone shot of waves", "duration": 5, **input}}
        response = await self.client.post(f"{self.url}/v1/jobs", json=body, headers=self.headers)
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_for(self, job_id: str, statuses: set[str], timeout: float = 15.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {job_id} stuck in {job['status']}")
            await asyncio.sleep(0.05)

    async def accepted(self, job_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The job once its provider has accepted it (its provider_task_id is set)."""
        async with asyncio.timeout(timeout):
            while not (job := await self.job(job_id))["provider_task_id"]:
                await asyncio.sleep(0.02)
        return job

    async def event_types(self, job_id: str) -> list[str]:
        """The job's logged event types, oldest first."""
        return [e.type for e in await self.store.events_after(0, job_id=job_id)]

    async def sandbox(self, provider: str, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, self.sandbox_urls[provider] + path, **kwargs)
        response.raise_for_status()
        return response.json()


class LoseFirstCreateAnswer(httpx.AsyncHTTPTransport):
    """Delivers the first create (a POST under `create_path`) to the provider, then drops its answer, as a dead
    connection would. `lost` counts dropped answers; `keys` holds each create's Idempotency-Key."""

    def __init__(self, create_path: str) -> None:
        super().__init__()
        self.create_path = create_path
        self.lost = 0
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and request.url.path.startswith(self.create_path):
            self.keys.append(request.headers.get("Idempotency-Key"))
            if not self.lost:
                self.lost += 1
                await response.aread()
                raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


async def collect_events(
    stack_: Stack, url: str, until: str, found: list[dict[str, Any]], connected: asyncio.Event | None = None
) -> None:
    """Read an SSE stream into `found` (each event's data, its `id:` checked) until an event of type `until`;
    `connected` is set once the stream is open."""
    async with aconnect_sse(stack_.client, "GET", url, headers=stack_.headers) as source:
        if connected is not None:
            connected.set()
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # the opening `retry:` field
            event = msgspec.json.decode(sse.data)
            assert sse.id == str(event["id"])
            found.append(event)
            if sse.event == until:
                return


@asynccontextmanager
async def stack(
    tmp_path: Path,
    *,
    knobs: SandboxKnobs | None = None,
    providers: tuple[str, ...] = ("seedancee2",),
    http_client: httpx.AsyncClient | None = None,
    provider_overrides: dict[str, dict[str, Any]] | None = None,
    webhook_resolve: Resolver = system_resolver,
    health: ProviderHealth | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Emulators on their own ports, then Reelay pointing at them, then an API key. `webhook_resolve` stands in
    for DNS for callers' webhook receivers; `health` for provider health."""
    knobs = knobs or SandboxKnobs(processing_after_s=0.1, complete_after_s=0.4)
    async with httpx.AsyncClient(timeout=10) as client:
        sandbox_socks = {name: bind() for name in providers}
        reelay_sock = bind()
        provider_settings = dict(Settings().providers)
        for name, sock in sandbox_socks.items():
            provider_settings[name] = msgspec.structs.replace(
                emulator_settings(SANDBOXES[name], url_of(sock)), **(provider_overrides or {}).get(name, {})
            )
        settings = make_settings(tmp_path, public_url=url_of(reelay_sock), providers=provider_settings, **overrides)
        store = create_store(
            settings.database_url,
            encode_job,
            clock=time.time,
            sqlite_synchronous=settings.sqlite_synchronous,
            first_delivery_delay=settings.webhook_retry_schedule[0],
            archive=settings.assets != "off",
        )
        app = create_app(settings, http_client=http_client, store=store, webhook_resolve=webhook_resolve, health=health)
        sandbox_apps = {name: SANDBOXES[name].build(knobs) for name in providers}
        sandboxes = [(a, sandbox_socks[n]) for n, a in sandbox_apps.items()]
        try:
            async with _serve_many(sandboxes), serving(app, reelay_sock, ConnectionLimits.from_settings(settings)):
                _, key = await create_key(store, "test", now=time.time())
                yield Stack(
                    app=app,
                    url=url_of(reelay_sock),
                    key=key,
                    client=client,
                    sandbox_urls={n: url_of(s) for n, s in sandbox_socks.items()},
                    settings=settings,
                    store=store,
                )
        finally:
            await store.close()


@asynccontextmanager
async def _serve_many(apps: list[tuple[Any, socket.socket]]) -> AsyncIterator[None]:
    if not apps:
        yield
        return
    app, sock = apps[0]
    async with serving(app, sock), _serve_many(apps[1:]):
        yield


def data_uri(length: int, media_type: str = "image/png") -> str:
    """A valid base64 `data:` URI of random bytes, at most `length` characters long and within 3 of it."""
    prefix = f"data:{media_type};base64,"
    payload = os.urandom((length - len(prefix)) // 4 * 3)
    return prefix + base64.b64encode(payload).decode()
