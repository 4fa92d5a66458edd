"""The event log across processes: writers append under one advisory lock and NOTIFY, and each process's
LISTEN feed announces every committed event to its listeners in id order, each once, whichever process wrote it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from storage.base import EventListener
from storage.errors import StorageUnavailable
from storage.records import EventRecord
from storage.rows import EVENT_COLUMNS, event_from_row

log = logging.getLogger("reelay.storage")

CHANNEL = "reelay_events"
"""The NOTIFY channel; a notification's payload is the newest event id of the transaction that sent it."""

# Transaction-level advisory lock key ("REELAY" and a number). Every writer takes _EVENT_LOCK before it draws an
# event id and holds it until it commits, so event ids are committed in increasing order.
_EVENT_LOCK = 0x5245454C41590001

# One round trip while the event lock is held: insert, then NOTIFY the new id (delivered at commit).
_INSERT_EVENT = (
    "WITH e AS (INSERT INTO events (job_id, api_key_id, type, created_at, job, detail) VALUES ($1, $2, $3, $4, $5, $6) "
    f"RETURNING id) SELECT id, pg_notify('{CHANNEL}', id::text) FROM e"
)
# xmin names the transaction that inserted a row (events are never updated): it groups events by commit.
_EVENTS_BETWEEN = f"SELECT xmin::text, {EVENT_COLUMNS} FROM events WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3"
_NO_UPPER_BOUND = 2**63 - 1
_FEED_BATCH = 500


async def insert_event(
    conn: asyncpg.Connection,
    job_id: str,
    api_key_id: str,
    created_at: str,
    event_type: str,
    snapshot: bytes,
    detail: bytes | None = None,
    *,
    locked: bool = False,
) -> int:
    """Insert an event in the transaction open on `conn`, holding the event lock until it commits (`locked`:
    `lock_events` took it already); its id is notified at commit. Returns the id."""
    if not locked:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _EVENT_LOCK)
    return int(await conn.fetchval(_INSERT_EVENT, job_id, api_key_id, event_type, created_at, snapshot, detail))


async def lock_events(conn: asyncpg.Connection, sql: str, *params: Any) -> list[asyncpg.Record]:
    """Take the event lock for the transaction open on `conn`, in one round trip with the query `sql`, whose
    rows it returns; its first placeholder binds the lock's key, so `$2` is the first of `params`."""
    rows: list[asyncpg.Record] = await conn.fetch(sql, _EVENT_LOCK, *params)
    return rows


class EventFeed:
    """Announces committed events to a store's listeners in id order, each once, whichever process wrote them.

    Writers commit event ids in increasing order (they hold _EVENT_LOCK from drawing an id to committing), so
    at any moment the committed events are all ids up to the newest one: everything above `last_seen` is new,
    and reading it from the log never skips an event that commits later. Announcing never awaits, so no lock
    is needed: each announcement takes what is still above `last_seen`, whoever read it from the log.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        listeners: Sequence[EventListener],
        *,
        check_seconds: float,
        reconnect_delays: Sequence[float],
    ) -> None:
        self._connect = connect
        self._listeners = listeners
        self._check_seconds = check_seconds
        self._reconnect_delays = reconnect_delays
        self.last_seen = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, last_seen: int) -> None:
        """Listen from `last_seen` on; returns once the first LISTEN is in place."""
        self.last_seen = last_seen
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="reelay-event-feed")
        try:
            await ready
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)  # unlike awaiting the task, lets our own cancellation through

    async def committed(self, conn: asyncpg.Connection, events: list[EventRecord]) -> None:
        """Announce the events a transaction on `conn` just committed, after every earlier event."""
        if events[0].id > self.last_seen + 1:
            # Ids in between are committed already (or were rolled back): announce them first.
            try:
                await self._read(conn, until=events[0].id)
            except Exception:
                # Committed all the same; the feed announces those events, and these after them, once it can.
                log.warning("storage.event_feed_behind", exc_info=True)
                self._wake.set()
                return
        if events[-1].id > self.last_seen:  # else the feed read them from the log first
            self._announce(events)

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            newest = int(payload)
        except ValueError:
            newest = self.last_seen + 1  # not ours to parse: read the log to be sure
        if newest > self.last_seen:
            self._wake.set()

    async def _run(self, ready: asyncio.Future[None]) -> None:
        failures = 0
        while True:
            conn = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()

                def on_lost(_: object, lost: asyncio.Event = lost) -> None:
                    lost.set()
                    self._wake.set()

                conn.add_termination_listener(on_lost)
                await conn.add_listener(CHANNEL, self._notified)
                if not ready.done():
                    ready.set_result(None)
                failures = 0
                # Notifications sent before LISTEN, or while no connection listened, are gone: read the log.
                self._wake.set()
                while not lost.is_set():
                    # Also reads the log now and then without a notification: that finds a dead peer.
                    with suppress(TimeoutError):
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (stop()).
                        async with asyncio.timeout(self._check_seconds):
                            await self._wake.wait()
                    self._wake.clear()
                    if not lost.is_set():
                        await self._read(conn, until=_NO_UPPER_BOUND)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(StorageUnavailable(f"cannot listen for events: {exc}"))
                    return
                log.warning("storage.event_feed_lost", exc_info=True)
            finally:
                if conn is not None:
                    conn.terminate()  # nothing to finish on it; a polite close could hang on a dead peer
            await asyncio.sleep(self._reconnect_delays[min(failures, len(self._reconnect_delays) - 1)])
            failures += 1

    async def _read(self, conn: asyncpg.Connection, *, until: int) -> None:
        """Announce every logged event above `last_seen` and below `until`."""
        while True:
            rows = await conn.fetch(_EVENTS_BETWEEN, self.last_seen, until, _FEED_BATCH)
            self._announce_rows(rows)
            if len(rows) < _FEED_BATCH:
                return

    def _announce_rows(self, rows: Sequence[asyncpg.Record]) -> None:
        """Announce the rows still above `last_seen` (others may have announced some meanwhile), by transaction."""
        group: list[EventRecord] = []
        xid = None
        for row in rows:
            if row[1] <= self.last_seen:
                continue
            if group and row[0] != xid:
                self._announce(group)
                group = []
            xid = row[0]
            group.append(event_from_row(row[1:]))
        if group:
            self._announce(group)

    def _announce(self, events: list[EventRecord]) -> None:
        self.last_seen = events[-1].id
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # the write is committed; one listener must not hide it or starve others
                log.exception("storage.listener_failed")
