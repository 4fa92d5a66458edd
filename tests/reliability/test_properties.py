"""Property tests (hypothesis): the job state machine under any order of reports, and SSE resume from any
point."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import lifecycle
from service.ids import split_api_key
from service.keys import create_key
from service.lifecycle import Report
from storage import JobRecord, Stage
from tests.harness import Stack, stack

TERMINALS = ("succeeded", "failed", "cancelled")


def _job() -> JobRecord:
    return lifecycle.new_job(
        job_id="job_01JZ0000000000000000000000",
        api_key_id="k",
        model="seedancee2/pro",
        provider="seedancee2",
        input={"prompt": "p"},
        metadata={},
        cost={},
        callback_token="t",
        now=0.0,
        timeout=60,
    )


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A provider's true history (queued, processing, one terminal status), delivered to Reelay as reports
    and callbacks in any order, with duplicates and losses; the terminal report arrives at least once."""
    final = draw(st.sampled_from(TERMINALS))
    history = ["queued", "processing", final]
    delivered = draw(st.lists(st.sampled_from(history), max_size=12))
    position = draw(st.integers(min_value=0, max_value=len(delivered)))
    delivered.insert(position, final)
    return final, delivered


@settings(max_examples=500)
@given(deliveries(), st.booleans())
def test_any_delivery_order_ends_in_the_providers_final_state_with_one_terminal_event(
    case: tuple[str, list[str]], submitted_first: bool
) -> None:
    final, delivered = case
    job = _job()
    events: list[str] = []
    if submitted_first:
        change = lifecycle.submitted(job, provider_task_id="vid_1", cost=None, now=1.0, next_poll_at=5.0)
        assert change is not None
        job, event = change
        events.append(event or "")
    stages = [job.stage]
    for status in delivered:
        change = lifecycle.reported(job, Report(status=status), now=2.0)  # type: ignore[arg-type]
        if change is not None:
            job, event = change
            if event:
                events.append(event)
        stages.append(job.stage)
        assert job.stage >= stages[-2], "a status moved backwards"
    assert job.status == final
    assert job.stage == Stage.TERMINAL
    assert [e for e in events if e in {f"job.{t}" for t in TERMINALS}] == [f"job.{final}"]
    assert len(events) == len(set(events))  # no event twice


async def _read(s: Stack, after: int, take: int) -> list[int]:
    """Event ids from /v1/events after `after`; disconnects after `take` events."""
    ids: list[int] = []
    headers = {**s.headers, "Last-Event-ID": str(after)}
    async with s.client.stream("GET", f"{s.url}/v1/events", headers=headers, timeout=5) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                ids.append(json.loads(line.removeprefix("data: "))["id"])
                if len(ids) >= take:
                    break
    return ids


async def test_resume_from_any_disconnect_point_gives_exactly_the_rest_of_the_log(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        _, other = await create_key(s.store, "other", now=time.time())
        for _ in range(4):  # this key's events, interleaved with another key's
            await s.submit()
            await s.client.post(
                f"{s.url}/v1/jobs",
                json={"model": "seedancee2/mini", "input": {"prompt": "o"}},
                headers={"x-api-key": other},
            )
        key_id = (split_api_key(s.key) or ("", ""))[0]
        log = [e.id for e in await s.store.events_after(0, api_key_id=key_id, limit=10_000)]
        everything = [e.id for e in await s.store.events_after(0, limit=10_000)]
        assert len(everything) > len(log) >= 4
        loop = asyncio.get_running_loop()

        def read(after: int, take: int) -> list[int]:
            # Hypothesis drives the examples from a worker thread; the HTTP calls run on the test's loop.
            return asyncio.run_coroutine_threadsafe(_read(s, after, take), loop).result(30)

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            start=st.sampled_from([0, *everything]),
            cuts=st.lists(st.integers(min_value=1, max_value=4), max_size=6),
        )
        def resumes_exactly(start: int, cuts: list[int]) -> None:
            expected = [i for i in log if i > start]
            received: list[int] = []
            for take in [*cuts, len(expected)]:  # read a few, disconnect, resume from the last id seen
                missing = len(expected) - len(received)
                if missing <= 0:
                    break
                received += read(received[-1] if received else start, min(take, missing))
            assert received == expected

        await asyncio.to_thread(resumes_exactly)
