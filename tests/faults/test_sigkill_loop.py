"""SIGKILL `reelay serve` again and again at chosen points of jobs' lives, restart it on the same database, and
check that nothing was lost, repeated or created twice upstream.

Kill points, each aimed at in turn (in a seeded random order) and then confirmed from what was in flight:
after a job was accepted, during an upstream create, between a create and storing the provider's task id,
during a webhook, during a status check, and at any moment. Kill and wait times come from one seeded RNG.

    .venv/bin/pytest tests/faults -q -s                          # CI: 12 kills
    REELAY_FAULT_KILLS=50 .venv/bin/pytest tests/faults -q -s    # the full loop
    REELAY_FAULT_SEED=7 ...                                      # another sequence of kill points and delays

The last line printed starts with `FAULTS` and holds the figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import SANDBOXES, SandboxKnobs
from tests.faults.rig import (
    CountingTransport,
    EventRow,
    Instrumented,
    JobRow,
    Probe,
    ReelayProcess,
    Seen,
    SseFollower,
    count_open,
    faults_env,
    read_events,
    read_jobs,
    read_until,
    token_of,
)
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import create_key

KILLS = int(os.environ.get("REELAY_FAULT_KILLS", "12"))
SEED = int(os.environ.get("REELAY_FAULT_SEED", "20260611"))

PROVIDERS = tuple(SANDBOXES)
# Providers that cannot tell whether a lost create reached them: such a job fails with submit_outcome_unknown.
FAIL_PROVIDERS = frozenset({"minuit", "imini", "magnific"})
WITH_CALLBACK_CLIENT = frozenset({"seedancee2", "minuit", "magnific", "mindvideo"})
WORKLOAD: list[tuple[str, dict[str, Any], int]] = [
    ("seedancee2/fast", {"resolution": "480p"}, 3),
    ("seedancee2/pro", {"resolution": "720p"}, 1),
    ("mindvideo/doubao-seedance-2-0-fast", {"resolution": "480p"}, 4),
    ("imini/doubao/seedance-2.0", {"resolution": "480p"}, 2),
    ("minuit/high_quality", {"resolution": "480p"}, 2),
    ("magnific/seedance-2-mini", {"resolution": "480p", "aspect_ratio": "16:9"}, 1),
]
# Every provider call takes latency_s (creates and status checks are in flight long enough to be hit); a
# create's answer takes ANSWER_DELAY_S more to come back after the task exists upstream.
KNOBS = SandboxKnobs(
    latency_s=0.15,
    processing_after_s=0.4,
    complete_after_s=1.2,
    failure_rate=0.2,
    duplicate_callback_rate=0.2,
    out_of_order_rate=0.1,
)
ANSWER_DELAY_S = 0.12
TARGETS = ("accept", "create", "unstored", "webhook", "poll", "anytime")
RANK = {
    "job.created": 0,
    "job.submitted": 1,
    "job.processing": 2,
    "job.succeeded": 3,
    "job.failed": 3,
    "job.cancelled": 3,
}
SETTLE_S = 90.0


@dataclass
class Submitted:
    n: int
    provider: str
    job_id: str
    status_code: int
    tries: int


@dataclass
class Workload:
    """One client submitting jobs steadily; a POST that gets no answer is sent again with its Idempotency-Key."""

    client: httpx.AsyncClient
    url: str
    auth: dict[str, str]
    probe: Probe
    rng: random.Random
    submitted: dict[int, Submitted] = field(default_factory=dict)
    retries: int = 0
    server_errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        models = [m for m, _, _ in WORKLOAD]
        weights = [w for _, _, w in WORKLOAD]
        extras = {m: e for m, e, _ in WORKLOAD}
        while not stop.is_set():
            n += 1
            model = self.rng.choices(models, weights)[0]
            body = {
                "model": model,
                "input": {"prompt": f"faults [fault:{n}] a drone shot of waves", "duration": 5, **extras[model]},
                "metadata": {"fault": str(n)},
            }
            headers = {**self.auth, "Idempotency-Key": f"fault-{n}"}
            tries = 0
            while True:
                tries += 1
                try:
                    response = await self.client.post(f"{self.url}/v1/jobs", json=body, headers=headers)
                except httpx.TransportError:
                    self.retries += 1
                    await asyncio.sleep(0.05)
                    continue
                if response.status_code >= 500:
                    self.server_errors.append(f"{response.status_code} {response.text[:200]}")
                    await asyncio.sleep(0.05)
                    continue
                break
            assert response.status_code in (200, 202), response.text
            job = response.json()
            self.submitted[n] = Submitted(n, job["provider"], job["id"], response.status_code, tries)
            self.probe.bump("accepted", 1)
            await asyncio.sleep(self.rng.uniform(0.05, 0.25))


@dataclass
class Kill:
    target: str
    reached: bool
    snapshot: dict[str, int]
    points: set[str]
    unstored: list[str]


async def _upstream_tokens(client: httpx.AsyncClient, urls: dict[str, str]) -> dict[str, set[int]]:
    """Per provider, the workload numbers of every create the emulator accepted."""
    tokens: dict[str, set[int]] = {}
    for provider, url in urls.items():
        accepted = (await client.get(f"{url}/_sandbox/creates")).json()["accepted"]
        tokens[provider] = {t for t in (token_of(entry["body"]) for entry in accepted) if t is not None}
    return tokens


def _readiness(target: str, probe: Probe) -> Callable[[], bool]:
    base = probe.accepted
    return {
        "accept": lambda: probe.accepted > base,
        "create": lambda: probe.creating > 0,
        "unstored": lambda: probe.held > 0,
        "webhook": lambda: probe.callbacks > 0,
        "poll": lambda: probe.polling > 0,
        "anytime": lambda: True,
    }[target]


STILL: dict[str, Callable[[Probe], bool]] = {
    "create": lambda p: p.creating > 0,
    "unstored": lambda p: p.held > 0,
    "webhook": lambda p: p.callbacks > 0,
    "poll": lambda p: p.polling > 0,
}


def _delay(target: str, rng: random.Random) -> float:
    return {
        "accept": rng.uniform(0.0, 0.005),
        "create": rng.uniform(0.0, KNOBS.latency_s * 0.8),
        "unstored": rng.uniform(0.0, ANSWER_DELAY_S * 0.7),
        "webhook": rng.uniform(0.0, 0.002),
        "poll": rng.uniform(0.0, KNOBS.latency_s * 0.8),
        "anytime": rng.uniform(0.0, 1.5),
    }[target]


async def _kill_once(
    target: str,
    rng: random.Random,
    probe: Probe,
    reelay: ReelayProcess,
    client: httpx.AsyncClient,
    db: Path,
    urls: dict[str, str],
) -> Kill:
    deadline = time.monotonic() + 6.0
    still = STILL.get(target)
    while True:
        reached = await probe.wait_until(_readiness(target, probe), timeout=max(0.0, deadline - time.monotonic()))
        delay = _delay(target, rng)
        if delay > 0.001:
            await asyncio.sleep(delay)
        # Kill only while the aimed-at work is still in flight; otherwise aim again (until the deadline).
        if not reached or still is None or still(probe) or time.monotonic() > deadline:
            break
    snapshot = probe.snapshot()
    just_accepted = time.monotonic() - probe.last_accept_at < 0.05
    await reelay.kill()
    # Reelay is dead: what it had stored is exactly what the next process starts from.
    jobs = read_jobs(db)
    upstream = await _upstream_tokens(client, urls)
    sending = [j for j in jobs.values() if j.dispatch_state == "sending" and j.provider_task_id is None]
    unstored = [j.id for j in sending if j.token in upstream[j.provider]]
    points = set()
    if just_accepted or any(j.dispatch_state == "pending" for j in jobs.values()):
        points.add("accept")
    if snapshot["creating"]:
        points.add("create")
    if unstored:
        points.add("unstored")
    if snapshot["callbacks"]:
        points.add("webhook")
    if snapshot["polling"]:
        points.add("poll")
    return Kill(target=target, reached=reached, snapshot=snapshot, points=points, unstored=unstored)


async def _list_jobs(client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"{url}/v1/jobs", params=params, headers=auth)
        assert page.status_code == 200, page.text
        body = page.json()
        for job in body["data"]:
            assert job["id"] not in found
            found[job["id"]] = job
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def _key(events: list[Seen] | list[EventRow]) -> list[tuple[int, str, str]]:
    return [(e.id, e.type, e.job_id) for e in events]


def _check_event_log(jobs: dict[str, JobRow], api_jobs: dict[str, dict[str, Any]], log: list[EventRow]) -> None:
    by_job: dict[str, list[EventRow]] = defaultdict(list)
    for event in log:
        by_job[event.job_id].append(event)
    assert set(by_job) == set(jobs), "events of jobs that do not exist, or jobs without events"
    ids = [e.id for e in log]
    assert ids == sorted(set(ids))
    for job_id, events in by_job.items():
        types = [e.type for e in events]
        ranks = [RANK[t] for t in types]
        where = (job_id, jobs[job_id].provider, types)
        assert types[0] == "job.created", where
        # Strictly increasing ranks: no event repeated, none out of order, exactly one terminal one, last.
        assert ranks == sorted(set(ranks)), where
        assert ranks[-1] == 3, where
        assert [e.id for e in events] == sorted({e.id for e in events}), where
        final = types[-1].removeprefix("job.")
        assert jobs[job_id].status == final == api_jobs[job_id]["status"] == events[-1].status, where


async def _check_creates(
    client: httpx.AsyncClient, urls: dict[str, str], jobs: dict[str, JobRow]
) -> tuple[Counter[str], int, Counter[str]]:
    """At most one upstream task per job anywhere; exactly one at MindVideo and Seedancee2; each job's task id
    is that task, and its status is the task's outcome. Returns accepted creates and attempts per provider,
    and MindVideo's idempotent replays."""
    by_token = {j.token: j for j in jobs.values()}
    tasks: dict[str, list[str]] = defaultdict(list)
    accepted: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    replays = 0
    outcomes: dict[str, str] = {}
    for provider, url in urls.items():
        creates = (await client.get(f"{url}/_sandbox/creates")).json()
        attempts[provider] = creates["attempts"]
        replays += len(creates.get("replayed", []))
        for entry in creates["accepted"]:
            token = token_of(entry["body"])
            assert token in by_token, f"{provider} created a task for no known job: {entry}"
            job = by_token[token]
            assert job.provider == provider
            if provider == "seedancee2":
                assert entry["body"]["metadata"]["reelay_job_id"] == job.id
            tasks[job.id].append(str(entry.get("id") or entry["task_id"]))
            accepted[provider] += 1
        for task in (await client.get(f"{url}/_sandbox/tasks")).json()["tasks"]:
            outcome = str(task["outcome"]).lower()
            outcomes[f"{provider}:{task.get('id') or task['task_id']}"] = (
                "succeeded" if outcome in {"completed", "succeeded", "success"} else "failed"
            )
    for job in jobs.values():
        found = tasks.get(job.id, [])
        where = (job.id, job.provider, job.status, job.error_code, found)
        if job.provider in FAIL_PROVIDERS:
            assert len(found) <= 1, where
        else:
            assert len(found) == 1, where
        if job.provider_task_id is not None:
            assert found == [job.provider_task_id], where
            assert job.status == outcomes[f"{job.provider}:{job.provider_task_id}"], where
        else:
            assert job.provider in FAIL_PROVIDERS, where
            assert job.error_code == "submit_outcome_unknown", where
        if job.error_code == "submit_outcome_unknown":
            assert job.provider in FAIL_PROVIDERS, where
            assert job.status == "failed", where
    return accepted, replays, attempts


async def _check_sse(
    client: httpx.AsyncClient,
    url: str,
    auth: dict[str, str],
    follower: SseFollower,
    log: list[EventRow],
    rng: random.Random,
) -> int:
    """The follower saw the log exactly; resuming anywhere (header or query) replays exactly the rest."""
    assert _key(follower.events) == _key(log), "the subscriber that resumed across restarts missed or repeated events"
    last = log[-1].id
    cursors = [0, *rng.sample([e.id for e in log[:-1]], k=min(4, len(log) - 1))]
    checks = 0
    for cursor in cursors:
        rest = [e for e in log if e.id > cursor]
        got = await read_until(client, f"{url}/v1/events", {**auth, "Last-Event-ID": str(cursor)}, last)
        assert _key(got) == _key(rest), cursor
        got = await read_until(client, f"{url}/v1/events?last_event_id={cursor}", auth, last)
        assert _key(got) == _key(rest), cursor
        checks += 2
    by_job: dict[str, list[EventRow]] = defaultdict(list)
    for event in log:
        by_job[event.job_id].append(event)
    for job_id in rng.sample(sorted(by_job), k=min(8, len(by_job))):
        events = by_job[job_id]
        got = await read_until(client, f"{url}/v1/jobs/{job_id}/events", auth, events[-1].id)
        assert _key(got) == _key(events), job_id
        got = await read_until(
            client, f"{url}/v1/jobs/{job_id}/events", {**auth, "Last-Event-ID": str(events[0].id)}, events[-1].id
        )
        assert _key(got) == _key(events[1:]), job_id
        checks += 2
    return checks


async def _settle(db: Path, reelay: ReelayProcess) -> None:
    async with asyncio.timeout(SETTLE_S):
        while count_open(db):
            assert reelay.alive(), f"reelay died on its own:\n{reelay.tail()}"
            await asyncio.sleep(0.25)


@pytest.mark.timeout(120 + 8 * KILLS)
async def test_sigkill_loop_loses_nothing_and_creates_nothing_twice(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    probe = Probe()
    socks = {name: bind() for name in PROVIDERS}
    urls = {name: url_of(sock) for name, sock in socks.items()}
    port = free_ports(1)  # the subprocess binds it, again after every kill
    db = tmp_path / "faults.db"
    reelay = ReelayProcess(faults_env(db, port, urls), tmp_path / "reelay.log")
    auth = {"Authorization": f"Bearer {create_key(reelay.env)}"}

    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)))
        for index, name in enumerate(PROVIDERS):
            extra: dict[str, Any] = {}
            if name in WITH_CALLBACK_CLIENT:
                callbacks = httpx.AsyncClient(transport=CountingTransport(probe))
                stack.push_async_callback(callbacks.aclose)
                extra["callback_client"] = callbacks
            knobs = SandboxKnobs(**{**_fields(KNOBS), "seed": SEED + index})
            app = Instrumented(SANDBOXES[name].build(knobs, **extra), probe, ANSWER_DELAY_S)
            await stack.enter_async_context(serving(app, socks[name]))
        stack.callback(reelay.ensure_dead)

        await reelay.start(client)
        follower = SseFollower(client, reelay.url, auth)
        workload = Workload(client, reelay.url, auth, probe, random.Random(SEED + 1))
        stop = asyncio.Event()
        background = [asyncio.create_task(follower.run()), asyncio.create_task(workload.run(stop))]
        stack.push_async_callback(_cancel, background)

        kills: list[Kill] = []
        order: list[str] = []
        for i in range(KILLS):
            if i % len(TARGETS) == 0:
                order = list(TARGETS)
                rng.shuffle(order)
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # the workload runs again before the next kill
            kills.append(await _kill_once(order[i % len(TARGETS)], rng, probe, reelay, client, db, urls))
            await reelay.start(client)

        stop.set()
        await asyncio.wait_for(background[1], 30)
        await _settle(db, reelay)
        await asyncio.sleep(2.5)  # late duplicate and stale callbacks land now; they must change nothing
        jobs = read_jobs(db)
        log = read_events(db)
        async with asyncio.timeout(15):
            while follower.last_id < log[-1].id:
                if background[0].done():
                    background[0].result()  # the follower failed (a wrong event): say why, not just "timeout"
                await asyncio.sleep(0.1)
        await _cancel(background[:1])

        # No job lost: every job the API answered for exists, is listed, and is terminal.
        api_jobs = await _list_jobs(client, reelay.url, auth)
        assert set(api_jobs) == set(jobs)
        answered = {s.job_id for s in workload.submitted.values()}
        assert len(answered) == len(workload.submitted), "one Idempotency-Key gave two jobs"
        assert answered == set(jobs), "jobs nobody asked for, or asked-for jobs missing"
        assert not workload.server_errors, workload.server_errors
        # No event lost or repeated; the right number of creates upstream.
        _check_event_log(jobs, api_jobs, log)
        accepted, replays, attempts = await _check_creates(client, urls, jobs)
        sse_checks = await _check_sse(client, reelay.url, auth, follower, log, rng)
        assert follower.connections >= KILLS + 1

        # Every kill point was hit.
        points = Counter(p for k in kills for p in k.points)
        if len(TARGETS) <= KILLS:
            assert all(points[t] for t in TARGETS if t != "anytime"), points
        assert await reelay.terminate() == 0, reelay.tail()

    aimed = [k for k in kills if k.target != "anytime"]
    lost = {job_id for k in kills for job_id in k.unstored}
    unknown = sum(1 for j in jobs.values() if j.error_code == "submit_outcome_unknown")
    recovered = Counter(jobs[j].provider for j in lost if jobs[j].provider_task_id is not None)
    statuses = Counter(j.status for j in jobs.values())
    by_provider = Counter(j.provider for j in jobs.values())
    print(
        f"\nFAULTS kills={KILLS} seed={SEED} jobs={len(jobs)} "
        f"({', '.join(f'{p}={by_provider[p]}' for p in PROVIDERS)}) "
        f"succeeded={statuses['succeeded']} failed={statuses['failed']} submit_outcome_unknown={unknown} | "
        f"creates accepted/attempted: {', '.join(f'{p}={accepted[p]}/{attempts[p]}' for p in PROVIDERS)}, "
        f"mindvideo idempotent replays={replays} | "
        f"lost create answers={len(lost)} (recovered: {', '.join(f'{p}={n}' for p, n in sorted(recovered.items()))}) | "
        f"kill points: {', '.join(f'{t}={points[t]}' for t in TARGETS if t != 'anytime')} "
        f"(aimed {len(aimed)}, hit {sum(k.target in k.points for k in aimed)}) | "
        f"POST retries={workload.retries} events={len(log)} sse reconnects={follower.connections - 1} "
        f"sse resume checks={sse_checks} | duration={time.monotonic() - started:.1f}s"
    )


def _fields(knobs: SandboxKnobs) -> dict[str, Any]:
    return {name: getattr(knobs, name) for name in knobs.__struct_fields__}


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
