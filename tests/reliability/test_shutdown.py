"""SIGTERM on a real `reelay serve`: it stops accepting, tells SSE clients to reconnect, hands back an
in-flight create, and exits within a bounded time; after a restart the job is created exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import create_key, reelay_env, reelay_serve, wait_ready

DRAIN_SECONDS = 1.5
EXIT_BOUND_SECONDS = 6.0  # uvicorn stops at once, the drain waits DRAIN_SECONDS, then the store closes


async def test_sigterm_hands_back_work_and_closes_streams_in_bounded_time(tmp_path: Path) -> None:
    sandbox_sock, port = bind(), free_ports(1)  # `reelay serve` binds its port itself
    sandbox_port = sandbox_sock.getsockname()[1]
    env = reelay_env(
        tmp_path, port, {"seedancee2": url_of(sandbox_sock)}, REELAY_SHUTDOWN_DRAIN_SECONDS=str(DRAIN_SECONDS)
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {create_key(env)}"}
    log = tmp_path / "reelay.log"
    hanging = SANDBOXES["seedancee2"].build(SandboxKnobs(latency_s=30.0))  # every create hangs upstream
    lines: list[str] = []

    async with serving(hanging, sandbox_sock), httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as process:
            await wait_ready(client, url, process)

            connected = asyncio.Event()

            async def listen() -> None:
                async with client.stream("GET", f"{url}/v1/events", headers=headers) as stream:
                    assert stream.status_code == 200
                    connected.set()  # the stream is live once its headers are in
                    async for line in stream.aiter_lines():
                        lines.append(line)

            listener = asyncio.create_task(listen())
            async with asyncio.timeout(5):
                while not connected.is_set():
                    if listener.done():
                        listener.result()  # the stream failed before its headers: say why
                    await asyncio.sleep(0.01)
            created = await client.post(
                f"{url}/v1/jobs", headers=headers, json={"model": "seedancee2/mini", "input": {"prompt": "p"}}
            )
            job_id = created.json()["id"]
            await asyncio.sleep(1.0)  # the dispatcher now waits on the hanging create
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(EXIT_BOUND_SECONDS):
                await listener  # the server ended the stream
            await asyncio.sleep(0.3)
            try:
                await client.get(f"{url}/healthz")
                accepted_new = True
            except httpx.TransportError:
                accepted_new = False
            exit_code = await asyncio.to_thread(process.wait, EXIT_BOUND_SECONDS)
            elapsed = time.monotonic() - started
    print(f"\nSHUTDOWN exit code {exit_code} after {elapsed:.2f} s (bound {EXIT_BOUND_SECONDS} s)")
    assert exit_code == 0
    assert elapsed < EXIT_BOUND_SECONDS
    assert not accepted_new, "a new connection was accepted during shutdown"
    assert "event: job.created" in lines
    assert "retry: 1000" in lines  # the last hint, then the stream ends
    assert lines[-2].startswith(": server shutting down")

    # A healthy provider on the same address; the handed-back create goes out exactly once.
    healthy = SANDBOXES["seedancee2"].build(SandboxKnobs(processing_after_s=0.05, complete_after_s=0.2))
    async with serving(healthy, bind(sandbox_port)), httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as process:
            await wait_ready(client, url, process)
            async with asyncio.timeout(20):
                while (await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)).json()["status"] != "succeeded":
                    await asyncio.sleep(0.1)
            creates = (await client.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/creates")).json()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 15) == 0
    assert [c["body"]["metadata"]["reelay_job_id"] for c in creates["accepted"]] == [job_id]
