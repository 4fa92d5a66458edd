"""The test rig of the SIGKILL loop: a `reelay serve` subprocess, instrumented emulators, an SSE client
that resumes across restarts, and read-only views of the SQLite file.

The emulators run in the test process and outlive every kill. Each one is wrapped so the test can see what
is in flight at the moment it kills Reelay: creates not yet accepted, creates accepted whose answer is still
on its way back, status checks, and callbacks from the emulator to Reelay.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, MutableMapping
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from storage import Stage
from tests.processes import REELAY, reelay_env, wait_ready

TOKEN = re.compile(r"\[fault:(\d+)\]")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


# -- what is in flight ------------------------------------------------------------------------------------


@dataclass
class Probe:
    """Counters of work in flight, updated by the emulator wrappers, the callback transport and the client."""

    creating: int = 0  # creates inside an emulator, before the task exists
    held: int = 0  # creates whose task exists upstream while the answer is still on its way back
    polling: int = 0  # status checks and lookups inside an emulator
    callbacks: int = 0  # emulator callbacks sent to Reelay, not yet answered
    accepted: int = 0  # 202/200 answers to POST /v1/jobs
    last_accept_at: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def bump(self, name: str, delta: int) -> None:
        setattr(self, name, getattr(self, name) + delta)
        if name == "accepted":
            self.last_accept_at = time.monotonic()
        self._changed.set()

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait for `ready()` to hold; False if it did not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return ready()
        return True

    def snapshot(self) -> dict[str, int]:
        return {"creating": self.creating, "held": self.held, "polling": self.polling, "callbacks": self.callbacks}


class Instrumented:
    """ASGI wrapper of an emulator: counts provider calls in flight and holds back create answers.

    Holding a successful create's answer for `answer_delay_s` (after the task exists upstream) widens the
    window in which a crash loses the answer: the slow way back of a real network.
    """

    def __init__(self, app: Any, probe: Probe, answer_delay_s: float) -> None:
        self.app = app
        self.probe = probe
        self.answer_delay_s = answer_delay_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        kind = "creating" if scope["method"] == "POST" else "polling"
        state = {"counted": kind}
        self.probe.bump(kind, 1)

        async def watched_send(message: Message) -> None:
            if kind == "creating" and message["type"] == "http.response.start" and state["counted"] == "creating":
                self.probe.bump("creating", -1)
                state["counted"] = ""
                if message["status"] == 200:
                    self.probe.bump("held", 1)
                    try:
                        await asyncio.sleep(self.answer_delay_s)
                    finally:
                        self.probe.bump("held", -1)
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            if state["counted"]:
                self.probe.bump(state["counted"], -1)


class CountingTransport(httpx.AsyncBaseTransport):
    """The emulators' callback transport: counts callbacks sent to Reelay and not yet answered."""

    def __init__(self, probe: Probe) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._probe = probe

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._probe.bump("callbacks", 1)
        try:
            return await self._inner.handle_async_request(request)
        finally:
            self._probe.bump("callbacks", -1)

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- the Reelay process -----------------------------------------------------------------------------------


def faults_env(db: Path, port: int, sandbox_urls: dict[str, str]) -> dict[str, str]:
    """`reelay serve` wired to the emulators, with a short callback grace so a webhook lost to a kill is polled
    for soon, and frequent SSE heartbeats."""
    env = reelay_env(
        db.parent,
        port,
        sandbox_urls,
        REELAY_CALLBACK_GRACE_SECONDS="2",
        REELAY_SSE_HEARTBEAT_SECONDS="1",
    )
    env["REELAY_DATABASE_URL"] = f"sqlite:///{db}"
    return env


class ReelayProcess:
    """`reelay serve` as a child process, started again and again on the same database."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.url = env["REELAY_PUBLIC_URL"]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self, client: httpx.AsyncClient) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1}\n".encode())
            out.flush()
            self.process = subprocess.Popen([REELAY, "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        try:
            await wait_ready(client, self.url, self.process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def kill(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"reelay died on its own:\n{self.tail()}"
        self.process.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(self.process.wait, 10)
        assert code == -signal.SIGKILL

    async def terminate(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 20)

    def ensure_dead(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# -- SSE --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One event as a subscriber got it."""

    id: int
    type: str
    job_id: str
    status: str


class StreamRefused(Exception):
    """The server answered the stream request with something other than 200 (it may be starting or stopping)."""


async def stream_events(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    on_event: Callable[[Seen], bool],
    on_open: Callable[[], None] | None = None,
) -> None:
    """Read one SSE stream until it ends or `on_event` returns True."""
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise StreamRefused(f"{response.status_code}: {(await response.aread())!r}")
        if on_open is not None:
            on_open()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "id" in fields and "data" in fields:
                data = json.loads(fields["data"])
                assert data["id"] == int(fields["id"]), fields
                assert data["type"] == fields.get("event"), fields
                seen = Seen(
                    id=int(fields["id"]), type=data["type"], job_id=data["job"]["id"], status=data["job"]["status"]
                )
                if on_event(seen):
                    return
            fields = {}


class SseFollower:
    """A subscriber of `GET /v1/events` that stays connected through every kill, resuming with Last-Event-ID."""

    def __init__(self, client: httpx.AsyncClient, url: str, auth: dict[str, str]) -> None:
        self.client = client
        self.url = url
        self.auth = auth
        self.events: list[Seen] = []
        self.connections = 0
        self.last_id = 0

    def _seen(self, event: Seen) -> bool:
        self.events.append(event)
        self.last_id = event.id
        return False

    def _opened(self) -> None:
        self.connections += 1

    async def run(self) -> None:
        while True:
            headers = {**self.auth, "Last-Event-ID": str(self.last_id)}
            # A refused or dropped stream is retried; a wrong event fails the test.
            with suppress(httpx.TransportError, StreamRefused):
                await stream_events(self.client, f"{self.url}/v1/events", headers, self._seen, self._opened)
            await asyncio.sleep(0.05)


async def read_until(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], last_id: int, timeout: float = 15.0
) -> list[Seen]:
    """Events of one stream up to (and including) `last_id`, or until the stream ends."""
    got: list[Seen] = []

    def collect(event: Seen) -> bool:
        got.append(event)
        return event.id >= last_id

    async with asyncio.timeout(timeout):
        await stream_events(client, url, headers, collect)
    return got


# -- the database, read directly --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    id: str
    provider: str
    status: str
    dispatch_state: str
    provider_task_id: str | None
    error_code: str | None
    token: int


@dataclass(frozen=True)
class EventRow:
    id: int
    job_id: str
    type: str
    status: str


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, timeout=10)


def read_jobs(db: Path) -> dict[str, JobRow]:
    with closing(_connect(db)) as conn:
        rows = conn.execute(
            "SELECT id, provider, status, dispatch_state, provider_task_id, error, input FROM jobs"
        ).fetchall()
    jobs = {}
    for job_id, provider, status, dispatch_state, task_id, error, raw_input in rows:
        found = TOKEN.search(json.loads(raw_input)["prompt"])
        assert found is not None, raw_input
        jobs[job_id] = JobRow(
            id=job_id,
            provider=provider,
            status=status,
            dispatch_state=dispatch_state,
            provider_task_id=task_id,
            error_code=json.loads(error)["code"] if error else None,
            token=int(found.group(1)),
        )
    return jobs


def read_events(db: Path) -> list[EventRow]:
    with closing(_connect(db)) as conn:
        rows = conn.execute("SELECT id, job_id, type, job FROM events ORDER BY id").fetchall()
    return [EventRow(id=r[0], job_id=r[1], type=r[2], status=json.loads(r[3])["status"]) for r in rows]


def count_open(db: Path) -> int:
    with closing(_connect(db)) as conn:
        row = conn.execute(f"SELECT count(*) FROM jobs WHERE stage < {int(Stage.TERMINAL)}").fetchone()
    return int(row[0])


def token_of(body: Any) -> int | None:
    found = TOKEN.search(json.dumps(body))
    return int(found.group(1)) if found else None
