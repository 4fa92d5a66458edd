"""Chaos across all five providers: failures, 429 and 5xx bursts, dropped, duplicated and out-of-order
callbacks. Every job reaches the state its provider decided, exactly once, and nothing is created twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from sandbox import SANDBOXES, SandboxKnobs
from storage import Stage
from tests.harness import Stack, stack

JOBS = 200
PROVIDERS = tuple(SANDBOXES)
FIRST_FRAME = "https://example.com/first.png"
MODELS: list[tuple[str, dict[str, Any]]] = [
    ("seedancee2/pro", {"resolution": "480p"}),
    ("seedancee2/fast", {"resolution": "720p"}),
    ("seedancee2/mini", {"resolution": "480p"}),
    ("minuit/high_quality", {"resolution": "480p"}),
    ("minuit/wan2.7-i2v-spicy", {"resolution": "720p", "first_frame": FIRST_FRAME}),
    ("mindvideo/doubao-seedance-2-0-fast", {"resolution": "480p"}),
    ("imini/doubao/seedance-2.0", {"resolution": "480p"}),
    ("magnific/seedance-2-mini", {"resolution": "480p", "aspect_ratio": "16:9"}),
]
CHAOS = SandboxKnobs(
    latency_s=0.01,
    processing_after_s=0.2,
    complete_after_s=0.6,
    failure_rate=0.25,
    drop_callback_rate=0.3,
    duplicate_callback_rate=0.3,
    out_of_order_rate=0.3,
    burst_429=3,
    burst_5xx=3,
    seed=42,
)
SUCCEEDED = {"completed", "succeeded", "success"}
FAILED = {"failed"}


def _planned(task: dict[str, Any]) -> str:
    outcome = str(task["outcome"]).lower()
    assert outcome in SUCCEEDED | FAILED, task
    return "succeeded" if outcome in SUCCEEDED else "failed"


async def _submit_all(s: Stack) -> list[dict[str, Any]]:
    jobs = []
    for i in range(JOBS):
        model, extra = MODELS[i % len(MODELS)]
        if i == JOBS // 2:  # a second round of 429 and 5xx bursts while jobs are in flight
            for provider in PROVIDERS:
                await s.sandbox(provider, "PUT", "/_sandbox/knobs", json={**_knobs(), "seed": i})
        body = {"model": model, "input": {"prompt": f"chaos {i}", "duration": 5, **extra}}
        response = await s.client.post(f"{s.url}/v1/jobs", json=body, headers=s.headers)
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    return jobs


def _knobs() -> dict[str, Any]:
    built: dict[str, Any] = msgspec.to_builtins(CHAOS)
    return built


async def test_two_hundred_jobs_through_five_misbehaving_providers(tmp_path: Path) -> None:
    # The bursts open providers' circuits (6 failed creates in a row), and each half-open probe then meets the rest
    # of a burst: short cool-downs, capped low, keep the run short while circuits still open and close.
    circuits = {"circuit_cooldown_seconds": 0.5, "circuit_max_cooldown_seconds": 1.0}
    async with stack(tmp_path, knobs=CHAOS, providers=PROVIDERS, callback_grace_seconds=1.5, **circuits) as s:
        jobs = await _submit_all(s)
        async with asyncio.timeout(150):
            while True:
                records = [await s.store.get_job(job["id"]) for job in jobs]
                if all(r is not None and r.stage == Stage.TERMINAL for r in records):
                    break
                await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # late duplicate and out-of-order callbacks land now; they must change nothing

        tasks: dict[str, dict[str, Any]] = {}
        creates: dict[str, int] = {}
        for provider in PROVIDERS:
            listed = await s.sandbox(provider, "GET", "/_sandbox/tasks")
            for task in listed["tasks"]:
                tasks[f"{provider}:{task.get('id') or task['task_id']}"] = task
            accepted = await s.sandbox(provider, "GET", "/_sandbox/creates")
            creates[provider] = len(accepted["accepted"])

        finals = {job["id"]: await s.job(job["id"]) for job in jobs}
        by_provider = Counter(job["provider"] for job in finals.values())
        for provider in PROVIDERS:
            # One accepted create per job: nothing created twice, not even at providers without idempotency.
            assert creates[provider] == by_provider[provider], provider
        task_ids = Counter(f"{j['provider']}:{j['provider_task_id']}" for j in finals.values())
        assert all(count == 1 for count in task_ids.values())
        assert set(task_ids) == set(tasks)

        outcomes = Counter()
        for job in finals.values():
            task = tasks[f"{job['provider']}:{job['provider_task_id']}"]
            assert job["status"] == _planned(task), (job["id"], job["provider"], job["status"], task["outcome"])
            outcomes[job["status"]] += 1
            events = [e.type for e in await s.store.events_after(0, job_id=job["id"])]
            terminal = [e for e in events if e in {"job.succeeded", "job.failed", "job.cancelled"}]
            assert terminal == [f"job.{job['status']}"], (job["id"], events)
            assert events[0] == "job.created"
        assert outcomes["succeeded"] > 100
        assert outcomes["failed"] > 20

        callbacks = Counter()
        attempts = 0
        for provider in PROVIDERS:
            for record in (await s.sandbox(provider, "GET", "/_sandbox/callbacks"))["callbacks"]:
                callbacks[record.get("kind", "delivery")] += 1
            attempts += (await s.sandbox(provider, "GET", "/_sandbox/creates"))["attempts"]
        assert callbacks["dropped"] > 0
        assert callbacks["duplicate"] > 0
        print(  # the figures behind the reliability notes (pytest -s shows them)
            f"\nCHAOS {JOBS} jobs, outcomes {dict(outcomes)}, create attempts {attempts} for "
            f"{sum(creates.values())} accepted, callbacks {dict(callbacks)}"
        )
