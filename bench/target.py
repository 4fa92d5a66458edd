"""The system under test: a seeded Reelay database, its environment, signed Seedancee2 callbacks, processes."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.common import BIN, Process, spawn
from sandbox import SANDBOXES
from service.ids import new_job_id, new_token
from service.keys import create_key
from service.lifecycle import new_job, submitted
from service.wire import encode_job
from storage import create_store
from tests.ports import free_ports

SEEDANCEE2 = SANDBOXES["seedancee2"]
assert SEEDANCEE2.webhook_secret is not None
WEBHOOK_SECRET: str = SEEDANCEE2.webhook_secret
WEBHOOK_PATH = "/webhooks/seedancee2"
MODEL = "seedancee2/pro"
JOB_BODY = msgspec.json.encode(
    {"model": MODEL, "input": {"prompt": "a red kite over a grey sea, slow pan", "duration": 5}}
)


@dataclass(frozen=True)
class Key:
    id: str
    secret: str  # the full key, for Authorization: Bearer


@dataclass(frozen=True)
class SeededJob:
    id: str
    task_id: str


def callback_body(job: SeededJob) -> bytes:
    """The completed callback Seedancee2 sends for a task (the shape its emulator and docs give)."""
    day = "2026/11/21"
    return msgspec.json.encode(
        {
            "data": {
                "id": job.task_id,
                "status": "completed",
                "model": "seedance-2.0-pro",
                "created_at": "2026-11-21T10:00:00Z",
                "completed_at": "2026-11-21T10:01:00Z",
                "credits_charged": 50,
                "output": {
                    "video_url": f"https://media.seedancee2.ai/videos/{day}/{job.task_id}.mp4",
                    "thumbnail_url": f"https://media.seedancee2.ai/video-posters/{day}/{job.task_id}.jpg",
                },
                "metadata": {"reelay_job_id": job.id},
            }
        }
    )


def sign(body: bytes, timestamp: int | None = None) -> str:
    """`X-Seedancee2-Signature: t=<unix>,v1=hex(HMAC_SHA256(secret, "<t>." + body))`."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def webhook_headers(body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Seedancee2 sends with a completion callback, signed at `timestamp` (default: now)."""
    return {
        "Content-Type": "application/json",
        "X-Seedancee2-Event": "video.generation.completed",
        "X-Seedancee2-Signature": sign(body, timestamp),
    }


def webhook_request(job: SeededJob) -> bytes:
    """A complete HTTP/1.1 request, signed now, for raw-socket senders."""
    body = callback_body(job)
    headers = "".join(f"{name}: {value}\r\n" for name, value in webhook_headers(body).items())
    head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nhost: bench\r\n{headers}content-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class Database:
    """A Reelay database filled through the store's own API (so rows are exactly what Reelay writes)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def keys(self, count: int) -> list[Key]:
        store = create_store(self.url, encode_job, clock=time.time, sqlite_synchronous="NORMAL")
        await store.open()
        try:
            made = [await create_key(store, f"bench-{i}", now=time.time()) for i in range(count)]
        finally:
            await store.close()
        return [Key(record.id, secret) for record, secret in made]

    async def submitted_jobs(self, key: Key, count: int) -> list[SeededJob]:
        """Jobs Seedancee2 has accepted and not yet finished: each can take one completed callback."""
        return (await self.submitted_jobs_each([key], count))[key.id]

    async def submitted_jobs_each(self, keys: list[Key], count: int) -> dict[str, list[SeededJob]]:
        """`count` such jobs for each key, by key id, through one store."""
        store = create_store(self.url, encode_job, clock=time.time, sqlite_synchronous="NORMAL")
        await store.open()
        now = time.time()
        made: dict[str, list[SeededJob]] = {key.id: [] for key in keys}
        try:
            for key in keys:
                for _ in range(count):
                    job = new_job(
                        job_id=new_job_id(),
                        api_key_id=key.id,
                        model=MODEL,
                        provider="seedancee2",
                        input={"prompt": "bench", "duration": 5},
                        metadata={},
                        cost={"credits_estimate": 50},
                        callback_token=new_token(),
                        now=now,
                        timeout=86_400,
                    )
                    task_id = "tsk_" + new_token()[:20]
                    moved = submitted(job, provider_task_id=task_id, cost=None, now=now, next_poll_at=now + 86_400)
                    assert moved is not None
                    await store.create_job(moved[0], "job.submitted")
                    made[key.id].append(SeededJob(job.id, task_id))
        finally:
            await store.close()
        return made


def reelay_env(database_url: str, port: int, upstream_url: str | None = None, **extra: str) -> dict[str, str]:
    """Production defaults (JSON info logs, SQLite synchronous=FULL) with the limits a load test would trip raised."""
    # Nothing from the caller's shell leaks in.
    env = {key: value for key, value in os.environ.items() if not key.startswith("REELAY_")}
    env.update(
        REELAY_DATABASE_URL=database_url,
        REELAY_PORT=str(port),
        REELAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
        REELAY_SEEDANCEE2_API_KEY=SEEDANCEE2.api_key,
        REELAY_SEEDANCEE2_WEBHOOK_SECRET=WEBHOOK_SECRET,
        REELAY_SEEDANCEE2_BASE_URL=upstream_url or "http://127.0.0.1:9",  # discard port: nothing is sent there
        REELAY_RATE_LIMIT_PER_SECOND="0",
        REELAY_SSE_MAX_PER_KEY="20000",
    )
    env.update(extra)
    return env


@contextmanager
def reelay(env: dict[str, str], log: Path, role: str = "all") -> Iterator[Process]:
    with spawn([str(BIN / "reelay"), "serve", "--role", role], env, log, int(env["REELAY_PORT"])) as process:
        yield process


@contextmanager
def upstream(log: Path, provider: str = "seedancee2") -> Iterator[Process]:
    """A provider's emulator in its own process; tasks never finish during a run, so it sends no callbacks."""
    port = free_ports(1)
    command = [str(BIN / "python"), "-m", "bench.upstream", str(port), provider]
    with spawn(command, dict(os.environ), log, port) as process:
        yield process
