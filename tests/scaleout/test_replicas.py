"""Scale-out for real: two API replicas and two workers as processes on one PostgreSQL database. The SSE
subscriber is on replica A, provider webhooks go to replica B, and a worker is SIGKILLed mid-flight: no job
lost, none submitted twice, no event missing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from service.ids import split_api_key
from service.wire import encode_job
from storage import create_store
from tests import pg
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import REELAY, create_key, reelay_env, start_role, wait_ready
from tests.receivers import Receiver, receiving

JOBS = 30
TERMINAL = {"succeeded", "failed", "cancelled"}


async def test_two_api_replicas_and_two_workers_survive_a_killed_worker(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    first = free_ports(4)
    api_a, api_b, worker_1, worker_2 = range(first, first + 4)
    sandbox_sock = bind()
    async with postgres_server.database() as database_url:
        env = reelay_env(
            tmp_path,
            api_b,  # REELAY_PUBLIC_URL: every provider callback goes to replica B
            {"seedancee2": url_of(sandbox_sock)},
            REELAY_DATABASE_URL=database_url,
            REELAY_LEASE_SECONDS="3",
            REELAY_UPSTREAM_TIMEOUT_SECONDS="2",
            REELAY_CALLBACK_GRACE_SECONDS="2",
            REELAY_SSE_HEARTBEAT_SECONDS="1",
        )
        subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
        headers = {"Authorization": f"Bearer {create_key(env)}"}
        log = tmp_path / "replicas.log"
        # Creates take a while upstream, so the kill lands while some are in flight.
        sandbox = SANDBOXES["seedancee2"].build(
            SandboxKnobs(latency_s=0.3, processing_after_s=0.2, complete_after_s=1.0, failure_rate=0.2, seed=7)
        )
        processes = {
            "api-a": start_role(env, "api", api_a, log),
            "api-b": start_role(env, "api", api_b, log),
            "worker-1": start_role(env, "worker", worker_1, log),
            "worker-2": start_role(env, "worker", worker_2, log),
        }
        a, b = f"http://127.0.0.1:{api_a}", f"http://127.0.0.1:{api_b}"
        received: list[dict[str, Any]] = []
        try:
            async with serving(sandbox, sandbox_sock), httpx.AsyncClient(timeout=10) as client:
                for name, port in (("api-a", api_a), ("api-b", api_b), ("worker-1", worker_1), ("worker-2", worker_2)):
                    await wait_ready(client, f"http://127.0.0.1:{port}", processes[name])
                connected = asyncio.Event()

                async def subscribe() -> None:
                    async with client.stream("GET", f"{a}/v1/events", headers=headers, timeout=None) as stream:
                        connected.set()
                        async for line in stream.aiter_lines():
                            if line.startswith("data: "):
                                received.append(json.loads(line.removeprefix("data: ")))

                subscriber = asyncio.create_task(subscribe())
                await connected.wait()
                job_ids = []
                for i in range(JOBS):
                    target = a if i % 2 else b
                    response = await client.post(
                        f"{target}/v1/jobs",
                        headers=headers,
                        json={"model": "seedancee2/fast", "input": {"prompt": f"shot {i}", "resolution": "480p"}},
                    )
                    assert response.status_code == 202, response.text
                    job_ids.append(response.json()["id"])
                    if i == JOBS // 3:
                        processes["worker-1"].send_signal(signal.SIGKILL)  # mid-flight
                async with asyncio.timeout(60):
                    while True:
                        statuses = [
                            (await client.get(f"{a}/v1/jobs/{job_id}", headers=headers)).json()["status"]
                            for job_id in job_ids
                        ]
                        if all(s in TERMINAL for s in statuses):
                            break
                        await asyncio.sleep(0.3)
                await asyncio.sleep(1.5)  # the last events reach replica A's subscriber
                subscriber.cancel()
                creates = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/creates")).json()
                tasks = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/tasks")).json()["tasks"]
                callbacks = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/callbacks")).json()["callbacks"]
                finals = {
                    job_id: (await client.get(f"{b}/v1/jobs/{job_id}", headers=headers)).json() for job_id in job_ids
                }
                log_events: list[dict[str, Any]] = []
                after = 0
                while True:  # the whole log, through replica B, by resuming from each last id
                    async with client.stream(
                        "GET", f"{b}/v1/events", headers={**headers, "Last-Event-ID": str(after)}, timeout=5
                    ) as stream:
                        page: list[dict[str, Any]] = []
                        try:
                            async with asyncio.timeout(1.5):
                                async for line in stream.aiter_lines():
                                    if line.startswith("data: "):
                                        page.append(json.loads(line.removeprefix("data: ")))
                        except TimeoutError:
                            pass
                    if not page:
                        break
                    log_events += page
                    after = page[-1]["id"]
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(20)

    assert processes["worker-1"].returncode == -signal.SIGKILL
    for name in ("api-a", "api-b", "worker-2"):
        assert processes[name].returncode == 0, name
    # No job lost, each created upstream exactly once, each in the state the provider decided.
    per_job = Counter(c["body"]["metadata"]["reelay_job_id"] for c in creates["accepted"])
    assert per_job == Counter({job_id: 1 for job_id in job_ids})
    planned = {t["id"]: ("succeeded" if t["outcome"] == "completed" else "failed") for t in tasks}
    for job_id, job in finals.items():
        assert job["status"] == planned[job["provider_task_id"]], job_id
    # Webhooks went to replica B; the subscriber on replica A saw every event, in order, once.
    assert any(c["status_code"] == 200 and c["url"].startswith(b) for c in callbacks)
    ids = [e["id"] for e in received]
    assert ids == sorted(set(ids))
    assert ids == [e["id"] for e in log_events]
    for job_id in job_ids:
        types = [e["type"] for e in received if e["job"]["id"] == job_id]
        assert types[0] == "job.created"
        assert types[-1] == f"job.{finals[job_id]['status']}"
        assert sum(t in {"job.succeeded", "job.failed"} for t in types) == 1


async def test_two_workers_on_postgresql_lose_no_delivery_when_one_is_killed_mid_delivery(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    first = free_ports(3)
    api, worker_1, worker_2 = range(first, first + 3)
    sandbox_sock = bind()  # never served: the jobs stay queued, their job.created deliveries are the work
    receiver = Receiver.scripted(delay=0.5)  # answers late: the kill lands with every attempt in flight
    async with postgres_server.database() as database_url:
        env = reelay_env(
            tmp_path,
            api,
            {"seedancee2": url_of(sandbox_sock)},
            REELAY_DATABASE_URL=database_url,
            REELAY_LEASE_SECONDS="3",
            REELAY_UPSTREAM_TIMEOUT_SECONDS="1",
            REELAY_WEBHOOK_TIMEOUT="1",
            REELAY_WEBHOOK_ALLOW_PRIVATE="true",
            REELAY_WEBHOOK_RETRY_SCHEDULE="0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
        )
        subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
        key = create_key(env)
        split = split_api_key(key)
        assert split is not None
        headers = {"Authorization": f"Bearer {key}"}
        log = tmp_path / "replicas.log"
        processes = {
            "api": start_role(env, "api", api, log),
            "worker-1": start_role(env, "worker", worker_1, log),
            "worker-2": start_role(env, "worker", worker_2, log),
        }
        store = create_store(database_url, encode_job, clock=time.time)
        await store.open()
        try:
            async with receiving(receiver) as hooks, httpx.AsyncClient(timeout=10) as client:
                for name, port in (("api", api), ("worker-1", worker_1), ("worker-2", worker_2)):
                    await wait_ready(client, f"http://127.0.0.1:{port}", processes[name])
                # Both workers paused while the jobs are created, then worker 1 alone takes every delivery.
                for name in ("worker-1", "worker-2"):
                    processes[name].send_signal(signal.SIGSTOP)
                job_ids = []
                for i in range(JOBS):
                    response = await client.post(
                        f"http://127.0.0.1:{api}/v1/jobs",
                        headers=headers,
                        json={
                            "model": "seedancee2/fast",
                            "input": {"prompt": f"shot {i}", "resolution": "480p"},
                            # One receiver per job: no per-receiver cap holds them back, all are in flight at once.
                            "webhook_url": f"{hooks}/{i}",
                            "webhook_events": ["job.created"],
                        },
                    )
                    assert response.status_code == 202, response.text
                    job_ids.append(response.json()["id"])
                processes["worker-1"].send_signal(signal.SIGCONT)
                await receiver.wait_for(JOBS)
                processes["worker-1"].send_signal(signal.SIGKILL)  # every attempt sent, none answered yet
                processes["worker-2"].send_signal(signal.SIGCONT)
                async with asyncio.timeout(30):
                    for job_id in job_ids:
                        while not (views := await store.job_deliveries(split[0], job_id)) or any(
                            v.delivery.status != "succeeded" for v in views
                        ):
                            await asyncio.sleep(0.1)
        finally:
            await store.close()
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                process.wait(20)

    assert processes["worker-1"].returncode == -signal.SIGKILL
    assert processes["worker-2"].returncode == 0
    # Every job's delivery arrived twice (worker 1's attempt, never recorded, then worker 2's once the lease
    # expired), always with its one webhook-id.
    arrived: dict[str, list[str]] = {}
    for got in receiver.got:
        arrived.setdefault(got.data["job"]["id"], []).append(got.headers["webhook-id"])
    assert sorted(arrived) == sorted(job_ids)
    assert all(len(ids) == 2 and len(set(ids)) == 1 for ids in arrived.values()), arrived
