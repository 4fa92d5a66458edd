"""`reelay serve` against slow, oversized and vanishing clients, over raw sockets: each connection costs bounded
memory and time, an unauthenticated body is never read, and a client that leaves is not a server error.

One `reelay serve` with small limits serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.ports import free_ports
from tests.processes import create_key, reelay_env, reelay_serve, wait_ready

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_HEADER_BYTES = 8192
HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
KEEPALIVE_TIMEOUT = 1
LIMITS = {
    "REELAY_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "REELAY_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "REELAY_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "REELAY_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT),
    "REELAY_LOG_LEVEL": "info",
}


@dataclass
class Served:
    url: str
    port: int
    key: str
    log: Path
    client: httpx.AsyncClient

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp_path = tmp_path_factory.mktemp("limits")
    port = free_ports(1)  # `reelay serve` binds its port itself
    env = reelay_env(tmp_path, port, {}, **LIMITS)
    url, log = f"http://127.0.0.1:{port}", tmp_path / "reelay.log"
    key = create_key(env)
    async with httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as process:
            await wait_ready(client, url, process)
            yield Served(url=url, port=port, key=key, log=log, client=client)


@asynccontextmanager
async def connection(served: Served) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ")[1]), headers, body


async def seconds_until_closed(reader: asyncio.StreamReader, within: float) -> float:
    """How long the server took to close the connection, which sends nothing more meanwhile (a reset counts: the
    server closed with bytes from the client still unread)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within):
        with suppress(ConnectionResetError):
            assert await reader.read() == b""
    return loop.time() - started


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


def post_jobs_head(content_length: int, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: reelay\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


# -- request heads: size and time ---------------------------------------------------------------------

TOO_LARGE = {
    # A complete head, larger than the limit, in one write: measured once it is parsed.
    "complete": b"GET /healthz HTTP/1.1\r\nHost: reelay\r\nX-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n",
    # A head that never ends: refused once the bytes received exceed the limit, not buffered forever.
    "endless": b"GET /healthz HTTP/1.1\r\nHost: reelay\r\n" + b"X-More: aaaaaaaaaaaaaaaaaaaa\r\n" * 400,
}


@pytest.mark.parametrize("head", TOO_LARGE.values(), ids=TOO_LARGE.keys())
async def test_a_head_larger_than_the_limit_is_answered_431_and_the_connection_closed(
    served: Served, head: bytes
) -> None:
    async with connection(served) as (reader, writer):
        writer.write(head)
        async with asyncio.timeout(5):
            status, headers, body = await read_response(reader)
        assert status == 431, body
        assert error_code(body) == "headers_too_large"
        assert headers["connection"] == "close"
        await seconds_until_closed(reader, within=2)


async def test_a_head_within_the_limit_is_served_even_with_its_body_in_the_same_write(served: Served) -> None:
    """Bytes after the head (here 200 kB of body) do not count against the head's limit."""
    body = json.dumps({"model": "nope/none", "input": {"prompt": "a" * 200_000}}).encode()
    padding = f"X-Pad: {'p' * (MAX_HEADER_BYTES - 1024)}\r\n"
    head = post_jobs_head(len(body), served.key).replace(b"\r\n\r\n", f"\r\n{padding}\r\n".encode())
    async with connection(served) as (reader, writer):
        writer.write(head + body)
        async with asyncio.timeout(5):
            status, _, answer = await read_response(reader)
    assert status == 400, answer


STALLS = {
    "silent": b"",  # connects and sends nothing
    "half-a-head": b"GET /healthz HTTP/1.1\r\nHost: reelay\r\nX-Slow: ",
}


@pytest.mark.parametrize("sent", STALLS.values(), ids=STALLS.keys())
async def test_a_client_that_stalls_before_its_head_ends_is_disconnected_after_the_header_timeout(
    served: Served, sent: bytes
) -> None:
    async with connection(served) as (reader, writer):
        writer.write(sent)
        waited = await seconds_until_closed(reader, within=HEADER_TIMEOUT + 4)
    assert waited >= HEADER_TIMEOUT * 0.8


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(served: Served) -> None:
    async with connection(served) as (reader, writer):
        for _ in range(2):  # the connection is reused while it is used
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: reelay\r\n\r\n")
            async with asyncio.timeout(5):
                status, headers, _ = await read_response(reader)
            assert status == 200
            assert headers.get("connection") != "close"
        waited = await seconds_until_closed(reader, within=KEEPALIVE_TIMEOUT + 2)
    assert waited >= KEEPALIVE_TIMEOUT * 0.8


# -- request bodies -------------------------------------------------------------------------------------


async def test_a_body_sent_too_slowly_is_answered_408_and_the_connection_closed(served: Served) -> None:
    async with connection(served) as (reader, writer):
        writer.write(post_jobs_head(100, served.key) + b'{"model": ')
        async with asyncio.timeout(BODY_TIMEOUT + 4):
            status, headers, body = await read_response(reader)
        assert status == 408, body
        assert error_code(body) == "request_timeout"
        assert headers["connection"] == "close"
        await seconds_until_closed(reader, within=2)


@pytest.mark.parametrize("content_length", [1000, 50 * 1024 * 1024], ids=["1kB", "50MB"])
async def test_an_unauthenticated_post_is_answered_401_without_reading_its_body(
    served: Served, content_length: int
) -> None:
    """The body is never sent: a server that waited for it would answer 408 (or 413), not 401."""
    async with connection(served) as (reader, writer):
        writer.write(post_jobs_head(content_length))
        async with asyncio.timeout(BODY_TIMEOUT * 0.8):
            status, _, body = await read_response(reader)
        assert status == 401, body
        await seconds_until_closed(reader, within=BODY_TIMEOUT + 2)


async def test_the_unread_body_of_a_refused_request_is_discarded_for_at_most_the_body_timeout(
    served: Served,
) -> None:
    """After a 401 the rest of the body is read and dropped (so the client sees the answer), but a client that
    trickles it is cut off: every byte it sends would otherwise restart uvicorn's keep-alive timer."""
    async with connection(served) as (reader, writer):
        writer.write(post_jobs_head(1000))
        async with asyncio.timeout(2):
            status, _, _ = await read_response(reader)
        assert status == 401

        async def trickle() -> None:
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(BODY_TIMEOUT / 5)

        trickling = asyncio.create_task(trickle())
        try:
            waited = await seconds_until_closed(reader, within=BODY_TIMEOUT + KEEPALIVE_TIMEOUT + 2)
        finally:
            trickling.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await trickling
    assert waited >= BODY_TIMEOUT * 0.8


async def test_a_client_that_disconnects_mid_body_is_not_a_server_error(served: Served) -> None:
    async with connection(served) as (_, writer):
        writer.write(post_jobs_head(1000, served.key) + b'{"model": "seedancee2/pro", ')
        await writer.drain()
    closed_requests = re.compile(r'^reelay_http_requests_total\{.*route="/v1/jobs",status="499"\} 1\.0$', re.M)
    async with asyncio.timeout(5):
        while not closed_requests.search(metrics := (await served.client.get(f"{served.url}/metrics")).text):
            await asyncio.sleep(0.05)
    assert 'status="500"' not in metrics
    lines = served.log_lines()
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    assert [line["level"] for line in lines if line["event"] == "http.client_disconnected"] == ["info"]
