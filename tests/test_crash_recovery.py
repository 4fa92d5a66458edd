"""Real processes: SIGKILL Reelay while jobs wait for a provider that is down; after a restart every job
reaches the provider exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.sandbox import SANDBOXES, SandboxKnobs
from tests.harness import bind, serving, url_of

REELAY = [str(Path(sys.executable).parent / "reelay")]
JOBS = 12


def _env(tmp_path: Path, port: int, sandbox_url: str) -> dict[str, str]:
    spec = SANDBOXES["seedancee2"]
    assert spec.webhook_secret is not None
    return {
        **os.environ,
        "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'crash.db'}",
        "REELAY_PORT": str(port),
        "REELAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REELAY_SEEDANCEE2_BASE_URL": sandbox_url,
        "REELAY_SEEDANCEE2_API_KEY": spec.api_key,
        "REELAY_SEEDANCEE2_WEBHOOK_SECRET": spec.webhook_secret,
        "REELAY_LOG_LEVEL": "warning",
    }


@contextmanager
def _reelay(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen([*REELAY, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def _wait_healthy(client: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(20):
        while True:
            assert process.poll() is None, "reelay exited during start-up"
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def test_sigkill_with_queued_jobs_then_restart_submits_each_job_once(tmp_path: Path) -> None:
    reelay_sock, sandbox_sock = bind(), bind()
    port = reelay_sock.getsockname()[1]
    reelay_sock.close()  # the subprocess binds it
    env = _env(tmp_path, port, url_of(sandbox_sock))
    url = f"http://127.0.0.1:{port}"
    created = subprocess.run(
        [*REELAY, "keys", "create", "--name", "crash", "--json"], env=env, capture_output=True, check=True
    )
    key = json.loads(created.stdout)["key"]
    headers = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "reelay.log"

    async with httpx.AsyncClient(timeout=10) as client:
        with _reelay(env, log) as first:
            await _wait_healthy(client, url, first)
            job_ids = []
            for i in range(JOBS):
                response = await client.post(
                    f"{url}/v1/jobs",
                    headers=headers,
                    json={"model": "seedancee2/fast", "input": {"prompt": f"shot {i}", "resolution": "480p"}},
                )
                assert response.status_code == 202
                job_ids.append(response.json()["id"])
            await asyncio.sleep(1.5)  # the dispatcher has tried and failed: the provider is down
            first.send_signal(signal.SIGKILL)
            first.wait(10)

        sandbox = SANDBOXES["seedancee2"].build(SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3))
        async with serving(sandbox, sandbox_sock):
            with _reelay(env, log) as second:
                await _wait_healthy(client, url, second)
                async with asyncio.timeout(40):
                    for job_id in job_ids:
                        while True:
                            job = (await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)).json()
                            if job["status"] in {"succeeded", "failed", "cancelled"}:
                                break
                            await asyncio.sleep(0.1)
                        assert job["status"] == "succeeded", job
                creates = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/creates")).json()
                per_job = Counter(c["body"]["metadata"]["reelay_job_id"] for c in creates["accepted"])
                assert per_job == Counter({job_id: 1 for job_id in job_ids})
                second.send_signal(signal.SIGTERM)
                assert second.wait(15) == 0
