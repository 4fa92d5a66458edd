"""Per-key limits across replicas for real: two API replicas as processes on one PostgreSQL database count one
request rate and one stream cap between them, and a killed replica's streams give their places back."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests import pg
from tests.ports import free_ports
from tests.processes import REELAY, create_key, reelay_env, start_role, wait_ready


@asynccontextmanager
async def two_replicas(
    server: pg.PostgresServer, tmp_path: Path, **settings: str
) -> AsyncIterator[tuple[dict[str, subprocess.Popen[bytes]], dict[str, str], dict[str, str]]]:
    """Replicas "a" and "b" (`--role api`) on one fresh database: their processes, URLs and a key's headers."""
    first = free_ports(2)
    ports = {"a": first, "b": first + 1}
    async with server.database() as database_url:
        env = reelay_env(tmp_path, first, {}, REELAY_DATABASE_URL=database_url, **settings)
        subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
        headers = {"Authorization": f"Bearer {create_key(env)}"}
        log = tmp_path / "replicas.log"
        processes = {name: start_role(env, "api", port, log) for name, port in ports.items()}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                for name, url in urls.items():
                    await wait_ready(client, url, processes[name])
            yield processes, urls, headers
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(20)


async def test_the_rate_limit_counts_requests_to_every_replica(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    # A burst of 6 and next to no refill: per process, each replica alone would take all 12 requests.
    settings = {"REELAY_RATE_LIMIT_PER_SECOND": "0.01", "REELAY_RATE_LIMIT_BURST": "6"}
    async with (
        two_replicas(postgres_server, tmp_path, **settings) as (_, urls, headers),
        httpx.AsyncClient(timeout=10) as client,
    ):
        answers = [await client.get(f"{urls['ab'[i % 2]]}/v1/jobs", headers=headers) for i in range(12)]
    assert [a.status_code for a in answers] == [200] * 6 + [429] * 6
    for refused in answers[6:]:
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1


async def test_the_stream_cap_counts_streams_on_every_replica_and_a_killed_replicas_lapse(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    ttl = 3.0
    settings = {"REELAY_SSE_MAX_PER_KEY": "2", "REELAY_STREAM_SLOT_TTL_SECONDS": str(ttl)}
    async with two_replicas(postgres_server, tmp_path, **settings) as (processes, urls, headers):
        streams: list[httpx.AsyncClient] = []

        async def open_stream(replica: str) -> int:
            """Open a stream on a replica; an accepted one stays open (its client is kept) until the test ends."""
            client = httpx.AsyncClient(timeout=5)
            response = await client.send(
                client.build_request("GET", f"{urls[replica]}/v1/events", headers=headers), stream=True
            )
            if response.status_code == 200:
                streams.append(client)
            else:
                assert response.headers["retry-after"] == "5"
                await response.aread()
                assert response.json()["error"]["code"] == "too_many_streams"
                await client.aclose()
            return response.status_code

        try:
            assert await open_stream("a") == 200
            assert await open_stream("b") == 200
            assert await open_stream("a") == 429  # one cap for both replicas
            assert await open_stream("b") == 429
            await streams.pop().aclose()  # b's stream ends: its place is free on any replica
            async with asyncio.timeout(5):
                while await open_stream("a") != 200:
                    await asyncio.sleep(0.05)
            # Replica a holds both places, for longer than a slot lives unless renewed.
            await asyncio.sleep(ttl * 1.5)
            assert await open_stream("b") == 429
            processes["a"].send_signal(signal.SIGKILL)
            processes["a"].wait(10)
            killed = time.monotonic()
            assert await open_stream("b") == 429  # the dead replica's slots are still live...
            async with asyncio.timeout(ttl + 5):
                while await open_stream("b") != 200:  # ...until they lapse
                    await asyncio.sleep(0.1)
            assert time.monotonic() - killed <= ttl + 1
        finally:
            for client in streams:
                await client.aclose()
