"""The SQLite store's one writing connection: group commit of concurrent writes, and transactions of their own.

Every write goes through this connection under one lock, so commit order is event-id order and the events a
batch logged are announced in that order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiosqlite

from storage.errors import StorageUnavailable
from storage.records import EventRecord
from storage.sqlite.errors import translated

T = TypeVar("T")
Work = Callable[[sqlite3.Connection, list[EventRecord]], T]
"""A write run on the writer's thread inside a transaction; it appends the events it logs to the list."""


class GroupCommitWriter:
    """Runs writes on one connection, committing those that arrive together in one transaction with one fsync."""

    def __init__(self, announce: Callable[[list[EventRecord]], None]) -> None:
        self.connection: aiosqlite.Connection | None = None
        """Set by the store once it has opened the connection; None while closed."""
        self._announce = announce
        self._lock = asyncio.Lock()
        self._batch: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Finish the writes already queued, then close the connection."""
        # The flusher runs until the queue is empty.
        while (flusher := self._flusher) is not None:
            await asyncio.wait([flusher])
        async with self._lock:
            if self.connection is not None:
                await self.connection.close()
            self.connection = None

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, with no other write running until the block ends; the block manages transactions."""
        async with self._lock:
            yield self._require()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction of its own, outside group commit, for writes that log no events."""
        async with self._lock:
            conn = self._require()
            with translated():
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    await conn.commit()
                except BaseException:
                    # also after a failed COMMIT, which SQLite may leave open (SQLITE_FULL, SQLITE_IOERR)
                    await asyncio.shield(conn.rollback())
                    raise

    async def run(self, work: Work[T]) -> T:
        """Run `work` in a write transaction on the writer's thread, in one hop; returns what it returns.

        Group commit: the writes that arrive while a batch is being committed form the next batch, which runs
        in one transaction with one fsync. Each write has a savepoint of its own, so one that raises undoes
        only itself (and gets its exception back); a failed COMMIT fails the whole batch.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        with translated():
            return await future

    def _require(self) -> aiosqlite.Connection:
        if self.connection is None:
            raise StorageUnavailable("store is not open")
        return self.connection

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    async with self._lock:
                        conn = self._require()
                        # aiosqlite runs each call on the connection's own thread; a batch is one such call.
                        works = [w for w, _ in batch]
                        outcomes, events = await conn._execute(_run_batch, conn._conn, works)  # type: ignore[no-untyped-call]
                        if events:
                            self._announce(events)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller was cancelled; the write stands, like an answer lost in transit
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._flusher = None


def _commit(db: sqlite3.Connection) -> None:
    # A function of its own so a test can make the COMMIT fail as a full disk would.
    db.execute("COMMIT")


def _run_batch(db: sqlite3.Connection, works: list[Work[Any]]) -> tuple[list[tuple[bool, Any]], list[EventRecord]]:
    """One transaction for a batch of writes, each under its own savepoint; runs on the writer's thread."""
    outcomes: list[tuple[bool, Any]] = []
    events: list[EventRecord] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for work in works:
            logged: list[EventRecord] = []
            db.execute("SAVEPOINT write")
            try:
                value = work(db, logged)
            except Exception as exc:
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                outcomes.append((False, exc))
            else:
                db.execute("RELEASE write")
                outcomes.append((True, value))
                events.extend(logged)
        _commit(db)
    except BaseException:
        if db.in_transaction:
            db.rollback()  # also after a failed COMMIT, which SQLite may leave open (SQLITE_FULL, SQLITE_IOERR)
        raise
    return outcomes, events
