"""Phase k: reads at scale. A database of 1,000,000 jobs and 5,000,000 events (100,000 and 500,000 with --quick),
seeded in bulk with straight SQL, beside one of 10,000 jobs; on SQLite and on PostgreSQL.

Measured over HTTP against `reelay serve`, one request at a time on a keep-alive connection: `GET /v1/jobs` (first
page), a `metadata.<key>` filter, a status+model filter, a deep cursor page (p50/p99 each), and `GET /v1/events`
resumed from the event 1,000,000 back (or from the key's first event in a smaller log): events/s until caught up.

Rows are what Reelay writes (built by service.lifecycle and encoded by the store's own row helpers): three keys
(the measured one holds 80 % of the jobs), four models, the usual spread of statuses, three metadata pairs per job,
created_at spread over 180 days. Each job has five events, each carrying the job's final snapshot.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from ulid import ULID

from bench.common import ms, percentile, say
from bench.target import Database, Key, reelay, reelay_env
from service.ids import encode_cursor
from service.lifecycle import Report, new_job, reported, submitted
from service.wire import encode_job
from storage import JobRecord
from storage.records import JOB_FIXED_COLUMNS, JOB_MUTABLE_COLUMNS
from storage.rows import fixed_values, mutable_values
from tests.pg import throwaway_cluster
from tests.ports import free_ports

EVENTS_PER_JOB = 5
RESUME_BACK = 1_000_000  # events behind the newest that the resume starts from
REQUESTS = 200  # per query and scale (50 with --quick)
SPREAD_DAYS = 180
CUSTOMERS = 1000  # metadata.customer values: a filter on one matches 0.1 % of a key's jobs
MODELS = {
    "seedancee2/pro": "seedancee2",
    "seedancee2/mini": "seedancee2",
    "minuit/high_quality": "minuit",
    "mindvideo/doubao-seedance-2-0-fast": "mindvideo",
}
# Cumulative shares: most jobs finished long ago; the unfinished ones are the newest.
STATUSES = (("succeeded", 0.85), ("failed", 0.93), ("cancelled", 0.96), ("processing", 0.98), ("queued", 1.0))
QUERIES = ("first_page", "metadata", "status_model", "deep_cursor")
_JOB_COLUMNS = JOB_FIXED_COLUMNS + JOB_MUTABLE_COLUMNS
_EVENT_COLUMNS = ("job_id", "api_key_id", "type", "created_at", "job")
_PAIR_COLUMNS = ("api_key_id", "key", "value", "job_id")  # job_metadata: the index of metadata filters


def run(work: Path, *, quick: bool = False) -> dict[str, Any]:
    """Both backends at both scales; the result holds every measure and the targets' inputs."""
    scales = (10_000, 100_000 if quick else 1_000_000)
    requests = 50 if quick else REQUESTS
    result: dict[str, Any] = {"scales": list(scales), "requests_per_query": requests}
    for backend in ("sqlite", "postgresql"):
        for jobs in scales:
            result[f"{backend}_{jobs}"] = _measure(work, backend, jobs, requests)
    return result


def _measure(work: Path, backend: str, jobs: int, requests: int) -> dict[str, Any]:
    if backend == "sqlite":
        url = f"sqlite:///{work / f'scale-{jobs}.db'}"
        try:
            return asyncio.run(_seed_and_query(work, url, backend, jobs, requests))
        finally:
            for suffix in ("", "-wal", "-shm"):
                (work / f"scale-{jobs}.db{suffix}").unlink(missing_ok=True)
    with throwaway_cluster() as server:

        async def on_postgres() -> dict[str, Any]:
            async with server.database() as pg_url:
                return await _seed_and_query(work, pg_url, backend, jobs, requests)

        return asyncio.run(on_postgres())


async def _seed_and_query(work: Path, url: str, backend: str, jobs: int, requests: int) -> dict[str, Any]:
    database = Database(url)  # opening the store migrates the schema
    keys = await database.keys(3)
    started = time.perf_counter()
    seed = Seed(keys, jobs)
    if backend == "sqlite":
        _load_sqlite(url.removeprefix("sqlite:///"), seed)
    else:
        await _load_postgres(url, seed)
    seeded = time.perf_counter() - started
    say(f"  k. {backend}: seeded {jobs:,} jobs and {jobs * EVENTS_PER_JOB:,} events in {seeded:.0f} s")
    port = free_ports(1)
    env = reelay_env(url, port, REELAY_LOG_LEVEL="warning")
    with reelay(env, work / f"reelay-scale-{backend}-{jobs}.log") as server:
        measures: dict[str, Any] = {"seed_seconds": round(seeded, 1)}
        client = _Client(server.port, keys[0].secret)
        try:
            rng = random.Random(7)
            for query in QUERIES:
                paths = [_path(query, seed, rng) for _ in range(requests)]
                for path in paths[:10]:  # warm: the first requests of a query pay for its plan and cold pages
                    client.get(path)
                times = [client.get(p) for p in paths]
                measures[query] = {"p50_ms": ms(percentile(times, 50)), "p99_ms": ms(percentile(times, 99))}
        finally:
            client.close()
        measures["resume"] = await _resume(server.port, keys[0].secret, seed)
    line = ", ".join(f"{q} p50 {measures[q]['p50_ms']:.1f} / p99 {measures[q]['p99_ms']:.1f} ms" for q in QUERIES)
    resume = measures["resume"]
    say(f"     {line}; resume {resume['events']:,} events at {resume['per_second']:,.0f}/s")
    return measures


# -- the rows --------------------------------------------------------------------------------------


@dataclass
class Seed:
    """What the load writes, generated lazily (a million jobs' rows never sit in memory at once)."""

    keys: list[Key]
    jobs: int

    def __post_init__(self) -> None:
        self.now = time.time()
        self.first = self.now - SPREAD_DAYS * 86_400
        self.templates = _templates(self.now)
        self.measured_ids: list[str] = []  # the measured key's job ids, oldest first (for deep cursors)
        self.measured_events = 0  # ... and its events
        self.events = 0

    def rows(self) -> Iterator[tuple[JobRecord, list[Any], list[tuple[Any, ...]]]]:
        """For each job, oldest first: the job, its row, and its events' rows."""
        rng = random.Random(42)
        step = (self.now - self.first) / self.jobs
        measured = self.keys[0].id
        for i in range(self.jobs):
            created = self.first + i * step
            key = self.keys[0].id if i % 10 < 8 else self.keys[1 + i % 2].id
            model = rng.choice(tuple(MODELS))
            draw = rng.random()
            status = next(name for name, upto in STATUSES if draw < upto)
            job_id = f"job_{ULID.from_timestamp(created)}"
            task = f"tsk_{rng.getrandbits(80):020x}"  # random enough, and much cheaper than the secrets module
            template = self.templates[(model, status)]
            stamp, finished = _iso(created), _iso(created + 90)
            job = msgspec.structs.replace(
                template,
                id=job_id,
                api_key_id=key,
                metadata={
                    "customer": f"cust_{rng.randrange(CUSTOMERS):04d}",
                    "campaign": f"spring-{i % 37}",
                    "env": "prod" if rng.random() < 0.9 else "staging",
                },
                callback_token=f"{rng.getrandbits(128):032x}",
                created_at=stamp,
                updated_at=finished,
                completed_at=finished if template.completed_at else None,
                provider_task_id=task if template.provider_task_id else None,
                output=None
                if template.output is None
                else {"videos": [{"url": f"https://cdn.example/{task}.mp4", "thumbnail_url": None}]},
                # Unfinished jobs are not due for a create, a poll or their deadline during the run: the server
                # must read this database, not change it.
                deadline_at=created + 3600 if template.completed_at else self.now + 2 * 86_400,
                next_attempt_at=None if template.next_attempt_at is None else self.now + 86_400,
                next_poll_at=None if template.next_poll_at is None else self.now + 86_400,
            )
            snapshot = encode_job(job)
            types = ("job.created", "job.submitted", "job.processing", "job.processing", f"job.{status}")
            events = [(job_id, key, t, stamp if n < 2 else finished, snapshot) for n, t in enumerate(types)]
            if key == measured:
                self.measured_ids.append(job_id)
                self.measured_events += EVENTS_PER_JOB
            self.events += EVENTS_PER_JOB
            yield job, [*fixed_values(job), *mutable_values(job)], events


def _templates(now: float) -> dict[tuple[str, str], JobRecord]:
    """A job of each model in each status, moved there by the lifecycle functions Reelay itself uses."""
    found = {}
    for model, provider in MODELS.items():
        queued = new_job(
            job_id="job_template",
            api_key_id="key",
            model=model,
            provider=provider,
            input={"prompt": "a red kite over a grey sea, slow pan", "duration": 5, "resolution": "720p"},
            metadata={},
            cost={"credits_estimate": 50},
            callback_token="token",
            now=now,
            timeout=3600,
        )
        moved = submitted(queued, provider_task_id="tsk_template", cost=None, now=now, next_poll_at=now + 30)
        assert moved is not None
        sent = moved[0]
        for status, _ in STATUSES:
            if status == "queued":
                found[(model, status)] = queued
                continue
            report = Report(
                status=status,  # type: ignore[arg-type]  # one of STATUSES
                output={"videos": [{"url": "https://cdn.example/x.mp4"}]} if status == "succeeded" else None,
                error={"code": "content_policy", "message": "refused by the provider"} if status == "failed" else None,
                cost={"credits_charged": 50} if status == "succeeded" else None,
            )
            done = reported(sent, report, now=now)
            assert done is not None
            found[(model, status)] = done[0]
    return found


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def _load_sqlite(path: str, seed: Seed) -> None:
    """One transaction of executemany on the stdlib driver; the database is Reelay's, migrated by its store. Each
    job's metadata pairs go to job_metadata too, as the store's own insert does."""
    db = sqlite3.connect(path, isolation_level=None)
    insert_job = f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' * len(_JOB_COLUMNS))})"
    insert_event = f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
    insert_pair = f"INSERT INTO job_metadata ({', '.join(_PAIR_COLUMNS)}) VALUES (?, ?, ?, ?)"
    try:
        # A bulk load into a fresh file: no journal (a crash loses only the benchmark's own database), a large
        # cache (job_metadata's keys arrive in no order). Reelay's store turns WAL back on when it opens it.
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")
        db.execute("BEGIN")
        jobs: list[list[Any]] = []
        events: list[tuple[Any, ...]] = []
        pairs: list[tuple[str, str, str, str]] = []
        for job, row, its_events in seed.rows():
            jobs.append(row)
            events.extend(its_events)
            pairs.extend((job.api_key_id, k, v, job.id) for k, v in job.metadata.items())
            if len(jobs) == 10_000:
                db.executemany(insert_job, jobs)
                db.executemany(insert_event, events)
                db.executemany(insert_pair, pairs)
                jobs, events, pairs = [], [], []
        db.executemany(insert_job, jobs)
        db.executemany(insert_event, events)
        db.executemany(insert_pair, pairs)
        db.execute("COMMIT")
    finally:
        db.close()


async def _load_postgres(url: str, seed: Seed) -> None:
    """COPY in batches, in one transaction, then VACUUM ANALYZE (as autovacuum would soon after such a load)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            jobs: list[list[Any]] = []
            events: list[tuple[Any, ...]] = []
            pairs: list[tuple[str, str, str, str]] = []

            async def copy() -> None:
                await conn.copy_records_to_table("jobs", records=jobs, columns=_JOB_COLUMNS)
                await conn.copy_records_to_table("events", records=events, columns=_EVENT_COLUMNS)
                await conn.copy_records_to_table("job_metadata", records=pairs, columns=_PAIR_COLUMNS)

            for job, row, its_events in seed.rows():
                jobs.append(row)
                events.extend(its_events)
                pairs.extend((job.api_key_id, k, v, job.id) for k, v in job.metadata.items())
                if len(jobs) == 10_000:
                    await copy()
                    jobs.clear()
                    events.clear()
                    pairs.clear()
            await copy()
        await conn.execute("VACUUM ANALYZE jobs, events, job_metadata")
    finally:
        await conn.close()


# -- the queries -----------------------------------------------------------------------------------


def _path(query: str, seed: Seed, rng: random.Random) -> str:
    if query == "first_page":
        return "/v1/jobs?limit=20"
    if query == "metadata":
        return f"/v1/jobs?limit=20&metadata.customer=cust_{rng.randrange(CUSTOMERS):04d}"
    if query == "status_model":
        return f"/v1/jobs?limit=20&status={rng.choice(('failed', 'cancelled'))}&model={rng.choice(tuple(MODELS))}"
    # A cursor among the key's oldest tenth of jobs: the page is 90 % of the way down the list.
    deep = seed.measured_ids[rng.randrange(len(seed.measured_ids) // 10)]
    return f"/v1/jobs?limit=20&cursor={encode_cursor(deep)}"


class _Client:
    """GET requests one at a time on one keep-alive connection; each answer is read whole and checked."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, path: str) -> float:
        started = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or not body.startswith(b'{"data":['):
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


async def _resume(port: int, key: str, seed: Seed) -> dict[str, Any]:
    """`GET /v1/events` with `Last-Event-ID` RESUME_BACK events behind the newest; read until the newest of the
    key's events arrived. Every event of the key after the cursor must arrive, once."""
    newest = seed.events
    after = max(0, newest - RESUME_BACK)
    expected = _measured_events_after(seed, after)
    last = max(i for i in range(newest, 0, -1) if _event_key(seed, i) == 0)  # the key's newest event id
    return await asyncio.to_thread(_read_stream, port, key, after, last, expected)


def _event_key(seed: Seed, event_id: int) -> int:
    """Which of the three keys an event belongs to (events are job by job, EVENTS_PER_JOB each)."""
    i = (event_id - 1) // EVENTS_PER_JOB
    return 0 if i % 10 < 8 else 1 + i % 2


def _measured_events_after(seed: Seed, after: int) -> int:
    first_job = after // EVENTS_PER_JOB  # the job that holds event after+1
    count = sum(EVENTS_PER_JOB for i in range(first_job, seed.jobs) if i % 10 < 8)
    if first_job < seed.jobs and first_job % 10 < 8:
        count -= after % EVENTS_PER_JOB  # that job's events up to `after` are not resent
    return count


def _read_stream(port: int, key: str, after: int, last: int, expected: int) -> dict[str, Any]:
    # Every frame follows a line break (the previous frame's, or its chunk's size line); a header never does.
    marker, end = b"\nid: ", b"\nid: %d\n" % last
    carry = b""  # the end of what came before: a marker or the end split between two reads is still found
    count = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(
            f"GET /v1/events HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\n"
            f"last-event-id: {after}\r\n\r\n".encode()
        )
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"the stream closed after {count:,} of {expected:,} events")
            # Markers wholly inside the carry were counted with the read before: only its last bytes come along.
            count += (carry[-(len(marker) - 1) :] + data).count(marker)
            window = carry + data
            if end in window:
                break
            carry = window[-(len(end) - 1) :]
        elapsed = time.perf_counter() - started
    if count != expected:
        raise RuntimeError(f"resume: {count:,} events arrived, {expected:,} expected")
    return {"events": count, "seconds": round(elapsed, 2), "per_second": round(count / elapsed)}
