"""A provider's rate budget across replicas for real: two workers as processes on one PostgreSQL database share one
budget, so the polling-only emulator never counts more than the limit in any second, though each worker alone
would send that much."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from tests import pg
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import REELAY, create_key, reelay_env, start_role, wait_ready

LIMIT = 10
MODEL = "mindvideo/doubao-seedance-2-0-fast"


async def test_two_workers_share_one_budget_at_the_emulator(postgres_server: pg.PostgresServer, tmp_path: Path) -> None:
    first = free_ports(3)
    api, worker_1, worker_2 = range(first, first + 3)
    sandbox_sock = bind()
    sandbox = SANDBOXES["mindvideo"].build(SandboxKnobs(processing_after_s=0.2, complete_after_s=600))
    async with postgres_server.database() as database_url:
        env = reelay_env(
            tmp_path,
            api,
            {"mindvideo": url_of(sandbox_sock)},
            REELAY_DATABASE_URL=database_url,
            REELAY_MINDVIDEO_RATE_LIMIT=str(LIMIT),
            REELAY_POLL_CONCURRENCY="32",
            REELAY_DISPATCH_CONCURRENCY="16",
        )
        subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
        headers = {"Authorization": f"Bearer {create_key(env)}"}
        log = tmp_path / "replicas.log"
        processes = {
            "api": start_role(env, "api", api, log),
            "worker-1": start_role(env, "worker", worker_1, log),
            "worker-2": start_role(env, "worker", worker_2, log),
        }
        try:
            async with serving(sandbox, sandbox_sock), httpx.AsyncClient(timeout=10) as client:
                for process, port in zip(processes.values(), (api, worker_1, worker_2), strict=True):
                    await wait_ready(client, f"http://127.0.0.1:{port}", process)
                for i in range(40):  # 40 creates, then far more status checks due than the budget allows
                    response = await client.post(
                        f"http://127.0.0.1:{api}/v1/jobs",
                        headers=headers,
                        json={"model": MODEL, "input": {"prompt": f"shot {i}"}},
                    )
                    assert response.status_code == 202, response.text
                await asyncio.sleep(10)
                seen = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/calls")).json()["per_second"]
                shown = (await client.get(f"http://127.0.0.1:{api}/v1/providers", headers=headers)).json()["data"]
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(20)
    assert max(seen.values()) <= LIMIT, seen
    assert sum(seen.values()) >= 60, seen  # the budget was used by both workers, not just respected
    assert next(p for p in shown if p["provider"] == "mindvideo")["rate_limit"] == LIMIT
