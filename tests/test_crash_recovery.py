"""Real processes: SIGKILL Reelay while jobs wait for a provider that is down; after a restart every job
reaches the provider exactly once. And while webhook deliveries wait for a receiver that is down: after a restart
every one arrives."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import httpx

from sandbox import SANDBOXES, SandboxKnobs
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import create_key, reelay_env, reelay_serve, wait_ready
from tests.receivers import Receiver, receiving

JOBS = 12


async def test_sigkill_with_queued_jobs_then_restart_submits_each_job_once(tmp_path: Path) -> None:
    sandbox_sock, port = bind(), free_ports(1)  # the subprocess binds its port itself
    env = reelay_env(tmp_path, port, {"seedancee2": url_of(sandbox_sock)})
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {create_key(env)}"}
    log = tmp_path / "reelay.log"

    async with httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as first:
            await wait_ready(client, url, first)
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
            with reelay_serve(env, log) as second:
                await wait_ready(client, url, second)
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


async def test_sigkill_with_pending_deliveries_then_restart_delivers_each_at_least_once(tmp_path: Path) -> None:
    sandbox_sock, hook_sock, port = bind(), bind(), free_ports(1)  # the receiver's port is bound, not listening
    env = reelay_env(
        tmp_path,
        port,
        {"seedancee2": url_of(sandbox_sock)},
        REELAY_WEBHOOK_ALLOW_PRIVATE="true",
        REELAY_WEBHOOK_RETRY_SCHEDULE=",".join(["0"] + ["0.3"] * 60),
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {create_key(env)}"}
    log = tmp_path / "reelay.log"
    hook = {"webhook_url": f"{url_of(hook_sock)}/h", "webhook_events": ["job.created"]}

    async with httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as first:
            await wait_ready(client, url, first)
            job_ids = []
            for i in range(JOBS):
                body = {"model": "seedancee2/fast", "input": {"prompt": f"shot {i}", "resolution": "480p"}, **hook}
                response = await client.post(f"{url}/v1/jobs", headers=headers, json=body)
                assert response.status_code == 202, response.text
                job_ids.append(response.json()["id"])
            await asyncio.sleep(1.0)  # attempts have failed meanwhile: the receiver is down
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert "connection refused" in log.read_text()  # the attempt log lines of the first run

        receiver = Receiver.scripted()
        async with receiving(receiver, hook_sock):
            with reelay_serve(env, log) as second:
                await wait_ready(client, url, second)
                async with asyncio.timeout(30):
                    while {got.data["job"]["id"] for got in receiver.got} != set(job_ids):
                        await asyncio.sleep(0.05)
                second.send_signal(signal.SIGTERM)
                assert second.wait(15) == 0
    # One message per job, whatever the number of attempts: receivers dedupe on webhook-id.
    ids = {got.headers["webhook-id"]: got.data["job"]["id"] for got in receiver.got}
    assert sorted(ids.values()) == sorted(job_ids)


async def test_sigkill_keeps_an_open_circuit_and_its_cool_down(tmp_path: Path) -> None:
    sandbox_sock, port = bind(), free_ports(1)  # bound, not listening: every create is refused a connection
    env = reelay_env(
        tmp_path,
        port,
        {"seedancee2": url_of(sandbox_sock)},
        REELAY_CIRCUIT_FAILURES="1",
        REELAY_CIRCUIT_COOLDOWN_SECONDS="60",
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {create_key(env)}"}
    log = tmp_path / "reelay.log"
    body = {"model": "seedancee2/fast", "input": {"prompt": "shot", "resolution": "480p"}}

    async def seedancee2(client: httpx.AsyncClient) -> dict[str, object]:
        listed = (await client.get(f"{url}/v1/providers", headers=headers)).json()["data"]
        found: dict[str, object] = next(p for p in listed if p["provider"] == "seedancee2")
        return found

    async with httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as first:
            await wait_ready(client, url, first)
            assert (await client.post(f"{url}/v1/jobs", headers=headers, json=body)).status_code == 202
            async with asyncio.timeout(15):
                while (before := await seedancee2(client))["state"] != "open":
                    await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(10)

        sandbox = SANDBOXES["seedancee2"].build(SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3))
        async with serving(sandbox, sandbox_sock):
            with reelay_serve(env, log) as second:
                await wait_ready(client, url, second)
                after = await seedancee2(client)
                assert (after["state"], after["open_until"], after["failures"]) == ("open", before["open_until"], 1)
                created = await client.post(f"{url}/v1/jobs", headers=headers, json=body)
                await asyncio.sleep(1.5)  # the dispatcher has seen the job: it waits out the cool-down, unsent
                job = (await client.get(f"{url}/v1/jobs/{created.json()['id']}", headers=headers)).json()
                assert job["status"] == "queued"
                assert (await client.get(f"{url_of(sandbox_sock)}/_sandbox/creates")).json()["attempts"] == 0
                second.send_signal(signal.SIGTERM)
                assert second.wait(15) == 0
