"""Provider calls over `service.transport.AiohttpTransport`: real servers on loopback, through a real adapter.

Each failure must reach `HttpProvider.call` as the httpx exception httpx's own transport raises, so a request that
never left is a plain transient error and one that may have reached the provider is an unknown outcome.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sandbox import SandboxKnobs
from sandbox.imini import create_imini_sandbox
from service.lifecycle import new_job
from service.providers.base import OutcomeUnknown, TransientError
from service.providers.imini import Imini
from service.settings import ProviderSettings
from service.transport import AiohttpTransport
from storage import JobRecord
from tests.harness import serving, stack, url_of
from tests.ports import bind

KEY = "imini-test-key"
SPEC = Imini.models[0]
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def job() -> JobRecord:
    return new_job(
        job_id="job_01JZ8B7Q4X8K2P9W3M5C6N7R8S",
        api_key_id="key_a",
        model=SPEC.id,
        provider="imini",
        input={"prompt": "a red kite over a grey sea"},
        metadata={},
        cost={},
        callback_token="token",
        now=time.time(),
        timeout=3600,
    )


@asynccontextmanager
async def adapter(
    base_url: str, timeout: httpx.Timeout | None = None, limits: httpx.Limits = LIMITS
) -> AsyncIterator[Imini]:
    """The imini adapter over an httpx client with the aiohttp transport, as Reelay makes its upstream client."""
    timeout = timeout or httpx.Timeout(5.0, connect=2.0)
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport) as client:
        yield Imini(ProviderSettings(base_url=base_url, api_key=KEY), client)


@asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[str]:
    """A TCP server on loopback whose every connection `handle` serves (to answer badly, late or not at all)."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request head (and any body up to its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    return head + (await reader.readexactly(length) if length else b"")


async def test_status_check_reads_the_emulators_answer_over_the_aiohttp_transport() -> None:
    knobs = SandboxKnobs(processing_after_s=0.0, complete_after_s=3600.0)
    sock = bind()
    async with serving(create_imini_sandbox(api_key=KEY, knobs=knobs), sock), adapter(url_of(sock)) as imini:
        submitted = await imini.submit(job(), SPEC, None)
        report = await imini.fetch(submitted.provider_task_id)
    assert report.status == "processing"
    assert report.provider_task_id == submitted.provider_task_id


async def test_refused_connection_is_transient_and_never_an_unknown_outcome() -> None:
    sock = bind()
    url = url_of(sock)
    sock.close()  # nothing listens there now
    async with adapter(url) as imini:
        with pytest.raises(TransientError, match="cannot connect") as failed:
            await imini.submit(job(), SPEC, None)
    assert not isinstance(failed.value, OutcomeUnknown)
    assert isinstance(failed.value.__cause__, httpx.ConnectError)


async def test_answer_slower_than_the_read_timeout_makes_a_create_an_unknown_outcome() -> None:
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        await asyncio.sleep(30)  # never answers

    async with raw_server(silent) as url, adapter(url, httpx.Timeout(0.3, connect=2.0)) as imini:
        with pytest.raises(OutcomeUnknown) as lost:
            await imini.submit(job(), SPEC, None)
        with pytest.raises(TransientError, match="transport error") as slow_poll:
            await imini.fetch("task_1")
    assert isinstance(lost.value.__cause__, httpx.ReadTimeout)
    assert isinstance(slow_poll.value.__cause__, httpx.ReadTimeout)
    assert received[0].startswith(b"POST /v1/videos/generate HTTP/1.1\r\n")  # the create did reach the server


async def test_waiting_past_the_pool_timeout_for_a_connection_is_a_connect_failure() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with raw_server(silent) as url, adapter(url, httpx.Timeout(10.0, pool=0.3), limits=one) as imini:
        holding = asyncio.create_task(imini.fetch("task_1"))  # takes the only connection and keeps it
        await asyncio.sleep(0.1)
        with pytest.raises(TransientError, match="cannot connect") as waited:
            await imini.submit(job(), SPEC, None)
        holding.cancel()
    assert not isinstance(waited.value, OutcomeUnknown)  # the create never left
    assert isinstance(waited.value.__cause__, httpx.ConnectTimeout | httpx.PoolTimeout)


@pytest.mark.parametrize(
    "answer_sent",
    [b"", b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"task'],
    ids=["no_answer", "half_an_answer"],
)
async def test_connection_closed_after_the_create_was_sent_makes_it_an_unknown_outcome(answer_sent: bytes) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer_sent)
        await writer.drain()
        writer.close()

    async with raw_server(cut) as url, adapter(url) as imini:
        with pytest.raises(OutcomeUnknown) as lost:
            await imini.submit(job(), SPEC, None)
    # Not a connect failure: the provider may have created the task, so it must not be sent again.
    assert isinstance(lost.value.__cause__, httpx.TransportError)
    assert not isinstance(lost.value.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


async def test_gzipped_429_reaches_the_adapter_with_its_retry_after_and_error_code() -> None:
    body = gzip.compress(b'{"error": {"code": "RATE_LIMITED", "message": "slow down"}}')

    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            head = (
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                f"retry-after: 7\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()

    async with raw_server(limited) as url, adapter(url) as imini:
        with pytest.raises(TransientError) as limited_error:
            await imini.fetch("task_1")
    assert limited_error.value.status == 429
    assert (limited_error.value.retry_after or 0) >= 7
    assert "RATE_LIMITED" in str(limited_error.value)


async def test_upstream_calls_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    request_lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_lines.append((await read_request(reader)).split(b"\r\n", 1)[0])
        answer = b'{"task_id": "task_1", "status": "processing"}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer))
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with raw_server(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with adapter("http://imini.invalid") as imini:
            report = await imini.fetch("task_1")
    assert report.status == "processing"
    assert request_lines == [b"GET http://imini.invalid/v1/videos/tasks/task_1 HTTP/1.1"]


async def test_reelay_calls_providers_through_the_aiohttp_transport(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("imini",)) as running:
        job_ = await running.submit(model="imini/doubao/seedance-2.0")
        done = await running.wait_for(job_["id"], {"succeeded", "failed"})
        client = running.app.state.ctx.gateway._adapters["imini"].client
    assert done["status"] == "succeeded"
    assert isinstance(client._transport, AiohttpTransport)
    assert client.timeout == httpx.Timeout(running.settings.upstream_timeout_seconds, connect=10.0)
