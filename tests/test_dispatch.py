"""The dispatcher: transient failures retried, permanent ones fail the job, lost answers never create twice."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import SandboxKnobs
from service.schedule import Backoff
from tests.harness import LoseFirstCreateAnswer, stack

QUICK = {"processing_after_s": 0.05, "complete_after_s": 0.2}


async def _accepted(running: Any) -> list[dict[str, Any]]:
    creates = await running.sandbox("seedancee2", "GET", "/_sandbox/creates")
    accepted: list[dict[str, Any]] = creates["accepted"]
    return accepted


async def test_rate_limited_create_is_retried(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SandboxKnobs(burst_429=2, **QUICK)) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        assert done["status"] == "succeeded"
        creates = await running.sandbox("seedancee2", "GET", "/_sandbox/creates")
        assert creates["attempts"] == 3
        assert len(creates["accepted"]) == 1


async def test_server_errors_are_retried_and_the_job_is_created_once(tmp_path: Path) -> None:
    # An error answer means nothing was created: the create is simply sent again.
    async with stack(tmp_path, knobs=SandboxKnobs(burst_5xx=2, **QUICK)) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        assert done["status"] == "succeeded"
        assert [a["body"]["metadata"]["reelay_job_id"] for a in await _accepted(running)] == [job["id"]]


async def test_permanent_rejection_fails_the_job_with_the_providers_code(tmp_path: Path) -> None:
    overrides = {"seedancee2": {"api_key": "sk_seedancee2_live_wrong"}}
    async with stack(tmp_path, knobs=SandboxKnobs(**QUICK), provider_overrides=overrides) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded", "failed"})
        assert done["status"] == "failed"
        assert done["error"]["code"] == "provider_rejected"
        assert done["error"]["provider_code"] == "invalid_api_key"
        assert done["error"]["message"]
        creates = await running.sandbox("seedancee2", "GET", "/_sandbox/creates")
        assert creates["attempts"] == 1  # a permanent error is not retried


async def test_lost_create_answer_is_reconciled_without_a_second_create(tmp_path: Path) -> None:
    transport = LoseFirstCreateAnswer("/v1/videos/generations")
    async with (
        httpx.AsyncClient(transport=transport) as client,
        stack(tmp_path, knobs=SandboxKnobs(**QUICK), http_client=client) as running,
    ):
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded", "failed"}, timeout=20)
        assert transport.lost == 1
        assert done["status"] == "succeeded"
        accepted = await _accepted(running)
        assert len(accepted) == 1
        assert done["provider_task_id"] == accepted[0]["id"]


async def test_unreachable_provider_fails_the_job_at_its_deadline(tmp_path: Path) -> None:
    overrides = {"seedancee2": {"base_url": "http://127.0.0.1:9"}}  # nothing listens on the discard port
    async with stack(tmp_path, provider_overrides=overrides, job_timeout_seconds=1.5) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"failed"}, timeout=15)
        assert done["error"]["code"] == "timeout"


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_grows_exponentially_within_jitter_and_cap(attempt: int) -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=30.0, jitter=0.2)
    base = min(30.0, 2.0**attempt)
    delays = [backoff.delay(attempt, random.Random(seed)) for seed in range(200)]
    assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
    assert len({round(d, 6) for d in delays}) > 100  # jittered, not one fixed value


def test_backoff_honours_retry_after() -> None:
    backoff = Backoff(initial=1.0, jitter=0.2)
    assert backoff.delay(0, random.Random(1), at_least=7.0) == 7.0
    assert backoff.delay(5, random.Random(1), at_least=1.0) > 7.0  # a longer backoff is kept
