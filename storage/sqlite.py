"""SQLite backend of the storage contract, on aiosqlite: one writer connection, one reader, WAL."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, closing
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from storage import migrations
from storage.base import BackupProgress, Decide, EventListener, JobEncoder, prune_in_batches
from storage.errors import (
    IdempotencyConflict,
    QueryRejected,
    SchemaOutdated,
    StorageError,
    StorageUnavailable,
    TaskTaken,
)
from storage.records import (
    COST_FIELDS,
    ApiKeyRecord,
    BackupReport,
    CreateOutcome,
    DispatchState,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PruneCounts,
    Receipt,
    Stage,
    UpdateOutcome,
    UsageRow,
)
from storage.records import (
    JOB_FIXED_COLUMNS as _FIXED,
)
from storage.records import (
    JOB_MUTABLE_COLUMNS as _MUTABLE,
)
from storage.rows import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    event_from_row,
    fixed_values,
    inline_from_row,
    job_from_row,
    json_text,
    last_within,
    mutable_values,
    now_iso,
)

log = logging.getLogger("reelay.storage")

_INSERT_SQL = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * len(_FIXED + _MUTABLE))})"
_UPDATE_SQL = "UPDATE jobs SET " + ", ".join(f"{c} = ?" for c in _MUTABLE) + " WHERE id = ?"

# Per cost figure: its exact sum (over the JSON number's own text) and how many jobs have it.
_COST_SUMS = ", ".join(
    f"decimal_sum(CASE WHEN json_type(cost, '$.{field}') IN ('integer', 'real') THEN cost -> '$.{field}' END), "
    f"count(CASE WHEN json_type(cost, '$.{field}') IN ('integer', 'real') THEN 1 END)"
    for field in COST_FIELDS
)
# Literal `stage = 3` so the planner can use the partial index jobs_by_completion.
_FINISHED_BEFORE = f"stage = {int(Stage.TERMINAL)} AND completed_at < ?"
_COPY_STEP_PAGES = 1024  # pages copied between progress reports (4 MiB with the default page size)


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared between connections; give a file")
    return path


class SqliteStore:
    """The storage contract on one SQLite file.

    Writes go through one connection under a lock, so commit order is event-id order and listeners
    are called in that order; reads use a second connection and never see uncommitted data.
    """

    prune_pause = 0.05
    """Seconds between prune batches: a writer in another process busy-waits for the lock and needs a gap."""

    def __init__(self, path: str | Path, encode_job: JobEncoder, *, synchronous: str = "FULL") -> None:
        self._path = str(path)
        self._encode_job = encode_job
        self._synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._listeners: list[EventListener] = []
        self._batch: list[tuple[_Work[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with _translated():
                self._writer = await self._connect()
                await self._writer.execute("PRAGMA journal_mode = WAL")
                await self.migrate()
                self._reader = await self._connect()
        except StorageUnavailable as exc:
            await self.close()  # half-open would make the next open() a no-op
            raise StorageUnavailable(
                f"cannot open the database {self._path}: {exc.__cause__ or exc} "
                "(is the file or its folder read-only, or the disk full?)"
            ) from exc
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA foreign_keys = ON")
            await conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            await conn._execute(conn._conn.create_aggregate, "decimal_sum", 1, _DecimalSum)  # type: ignore[no-untyped-call]
        except BaseException:
            # SQLite opens the file lazily; a connection that fails here still owns a worker thread.
            await asyncio.shield(conn.close())
            raise
        return conn

    async def close(self) -> None:
        # Writes already queued are finished first: the flusher runs until the queue is empty.
        while (flusher := self._flusher) is not None:
            await asyncio.wait([flusher])
        async with self._write_lock:
            for conn in (self._reader, self._writer):
                if conn is not None:
                    await conn.close()
            self._reader = self._writer = None

    async def migrate(self) -> list[str]:
        writer = self._writer
        if writer is None:
            raise StorageUnavailable("store is not open")
        applied: list[str] = []
        async with self._write_lock:
            with _translated():
                await writer.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                done = {row[0] for row in await writer.execute_fetchall("SELECT version FROM schema_migrations")}
                for version, name, sql in migrations.load("sqlite"):
                    if version in done:
                        continue
                    # executescript commits first, so the whole migration runs in its own BEGIN...COMMIT.
                    try:
                        await writer.executescript(
                            f"BEGIN IMMEDIATE;\n{sql}\n"
                            f"INSERT INTO schema_migrations VALUES ({version}, '{name}', '{now_iso()}');\nCOMMIT;"
                        )
                    except BaseException:
                        await asyncio.shield(writer.rollback())  # a failed script leaves its BEGIN open
                        raise
                    applied.append(name)
        return applied

    async def check(self) -> None:
        reader = self._require_reader()
        with _translated():
            rows = await reader.execute_fetchall("SELECT max(version) FROM schema_migrations")
        newest = migrations.newest("sqlite")
        current = next(iter(rows))[0]
        if current is None or current < newest:
            raise SchemaOutdated(f"schema version {current}, code expects {newest}; run `reelay migrate`")
        # A write probe: a full disk or a read-only file must make the store not ready.
        async with self._transaction() as conn:
            await conn.execute("UPDATE schema_migrations SET name = name WHERE version = ?", (newest,))

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    # -- plumbing ----------------------------------------------------------------------------

    def _require_reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StorageUnavailable("store is not open")
        return self._reader

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction of its own, outside group commit, for writes that log no events."""
        async with self._write_lock:
            conn = self._writer
            if conn is None:
                raise StorageUnavailable("store is not open")
            with _translated():
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    await conn.commit()
                except BaseException:
                    # also after a failed COMMIT, which SQLite may leave open (SQLITE_FULL, SQLITE_IOERR)
                    await asyncio.shield(conn.rollback())
                    raise

    def _announce(self, events: list[EventRecord]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # the write is committed; one listener must not hide it or starve others
                log.exception("storage.listener_failed")

    async def _write(self, work: _Work[T]) -> T:
        """Run `work` in a write transaction on the writer's thread, in one hop; returns what it returns.

        Group commit: the writes that arrive while a batch is being committed form the next batch, which runs
        in one transaction with one fsync. Each write has a savepoint of its own, so one that raises undoes
        only itself (and gets its exception back); a failed COMMIT fails the whole batch.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        with _translated():
            return await future

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    async with self._write_lock:
                        conn = self._writer
                        if conn is None:
                            raise StorageUnavailable("store is not open")
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

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> Iterable[sqlite3.Row]:
        reader = self._require_reader()
        with _translated():
            return await reader.execute_fetchall(sql, tuple(params))

    def _append_event(
        self, db: sqlite3.Connection, job: JobRecord, event_type: str, events: list[EventRecord]
    ) -> EventRecord:
        snapshot = self._encode_job(job)
        cursor = db.execute(
            "INSERT INTO events (job_id, api_key_id, type, created_at, job) VALUES (?, ?, ?, ?, ?)",
            (job.id, job.api_key_id, event_type, job.updated_at, snapshot),
        )
        event_id = cursor.lastrowid
        assert event_id is not None
        event = EventRecord(
            id=event_id,
            job_id=job.id,
            api_key_id=job.api_key_id,
            type=event_type,
            created_at=job.updated_at,
            job=snapshot,
        )
        events.append(event)
        return event

    # -- API keys ----------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?)",
                (key.id, key.name, key.secret_hash, key.created_at, key.revoked_at),
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._read(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = ?", [key_id]
        )
        for row in rows:
            return ApiKeyRecord(id=row[0], name=row[1], secret_hash=row[2], created_at=row[3], revoked_at=row[4])
        return None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
        return [ApiKeyRecord(id=r[0], name=r[1], secret_hash=r[2], created_at=r[3], revoked_at=r[4]) for r in rows]

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id)
            )
            return cursor.rowcount == 1

    # -- jobs --------------------------------------------------------------------------------

    async def create_job(
        self,
        job: JobRecord,
        event_type: str,
        *,
        idempotency: IdempotencyClaim | None = None,
        inline: Mapping[str, str] | None = None,
    ) -> CreateOutcome:
        def work(db: sqlite3.Connection, events: list[EventRecord]) -> CreateOutcome:
            if idempotency is not None:
                rows = db.execute(
                    "SELECT request_hash, job_id FROM idempotency_keys WHERE api_key_id = ? AND key = ?",
                    (job.api_key_id, idempotency.key),
                ).fetchall()
                for request_hash, job_id in rows:
                    existing = _select_job(db, job_id)
                    if existing is None:  # its job was pruned: the key expired with it
                        db.execute(
                            "DELETE FROM idempotency_keys WHERE api_key_id = ? AND key = ?",
                            (job.api_key_id, idempotency.key),
                        )
                        break
                    if request_hash != idempotency.request_hash:
                        raise IdempotencyConflict(job_id)
                    return CreateOutcome(job=existing, created=False)
                db.execute(
                    "INSERT INTO idempotency_keys (api_key_id, key, request_hash, job_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (job.api_key_id, idempotency.key, idempotency.request_hash, job.id, job.created_at),
                )
            db.execute(_INSERT_SQL, [*fixed_values(job), *mutable_values(job)])
            if inline:
                db.execute("INSERT INTO job_inline (job_id, data_uris) VALUES (?, ?)", (job.id, json_text(inline)))
            event = self._append_event(db, job, event_type, events)
            return CreateOutcome(job=job, created=True, event=event)

        return await self._write(work)

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        for row in rows:
            return job_from_row(row)
        return None

    async def inline_data(self, job_id: str) -> dict[str, str]:
        rows = await self._read("SELECT data_uris FROM job_inline WHERE job_id = ?", (job_id,))
        return inline_from_row(next(iter(rows), None))

    async def find_job_by_task(self, provider: str, provider_task_id: str) -> JobRecord | None:
        rows = await self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ? AND provider_task_id = ?",
            (provider, provider_task_id),
        )
        for row in rows:
            return job_from_row(row)
        return None

    async def list_jobs(
        self, api_key_id: str, filters: JobFilter, *, limit: int, before_id: str | None = None
    ) -> list[JobRecord]:
        clauses = ["api_key_id = ?"]
        params: list[Any] = [api_key_id]
        for column, value in (
            ("status", filters.status),
            ("model", filters.model),
            ("provider", filters.provider),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for key, value in filters.metadata.items():
            # json_each compares the decoded key; a JSON path cannot spell keys holding '"' or escapes
            clauses.append("EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ? AND value = ?)")
            params.extend([key, value])
        if before_id is not None:
            clauses.append("id < ?")
            params.append(before_id)
        params.append(limit)
        rows = await self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?", params
        )
        return [job_from_row(row) for row in rows]

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        def work(db: sqlite3.Connection, events: list[EventRecord]) -> UpdateOutcome:
            current = _select_job(db, job_id)
            if current is None:
                raise KeyError(job_id)
            if receipt is not None:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO webhook_receipts (provider, receipt_key, received_at) VALUES (?, ?, ?)",
                    (receipt.provider, receipt.key, now_iso()),
                )
                if cursor.rowcount == 0:
                    return UpdateOutcome(job=current, duplicate=True)
            decision = decide(current)
            if decision is None:
                return UpdateOutcome(job=current)
            job, event_type = decision
            try:
                db.execute(_UPDATE_SQL, [*mutable_values(job), job_id])
            except sqlite3.IntegrityError:
                owner = _task_owner(db, job)
                if owner is None or job.provider_task_id is None:
                    raise
                raise TaskTaken(job.provider, job.provider_task_id, owner) from None
            event = None if event_type is None else self._append_event(db, job, event_type, events)
            return UpdateOutcome(job=job, event=event, changed=True)

        return await self._write(work)

    # -- outbox and polling ------------------------------------------------------------------

    async def _claim(self, where: str, order: str, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        async with self._transaction() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} AND (lease_until IS NULL OR lease_until <= ?) "
                f"ORDER BY {order} LIMIT ?",
                (now, now, limit),
            )
            jobs = [job_from_row(row) for row in rows]
            if jobs:
                until = now + lease_seconds
                await conn.executemany("UPDATE jobs SET lease_until = ? WHERE id = ?", [(until, j.id) for j in jobs])
                jobs = [msgspec.structs.replace(j, lease_until=until) for j in jobs]
        return jobs

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(
            f"dispatch_state IN ('{DispatchState.PENDING}', '{DispatchState.SENDING}') AND next_attempt_at <= ?",
            "next_attempt_at",
            now,
            limit,
            lease_seconds,
        )

    async def claim_polls(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(
            f"stage IN ({int(Stage.SUBMITTED)}, {int(Stage.PROCESSING)}) AND next_poll_at <= ?",
            "next_poll_at",
            now,
            limit,
            lease_seconds,
        )

    async def release_leases(self) -> int:
        async with self._transaction() as conn:
            cursor = await conn.execute("UPDATE jobs SET lease_until = NULL WHERE lease_until IS NOT NULL")
            return cursor.rowcount

    # -- events and usage --------------------------------------------------------------------

    async def events_after(
        self,
        after_id: int,
        *,
        api_key_id: str | None = None,
        job_id: str | None = None,
        limit: int = 500,
        max_bytes: int | None = None,
    ) -> list[EventRecord]:
        clauses = ["id > ?"]
        params: list[Any] = [after_id]
        if api_key_id is not None:
            clauses.append("api_key_id = ?")
            params.append(api_key_id)
        if job_id is not None:
            clauses.append("job_id = ?")
            params.append(job_id)
        if max_bytes is not None:
            # Sizes first (length() of a BLOB does not load it), then only the events that fit.
            sizes = await self._read(
                f"SELECT id, length(job) FROM events WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
                [*params, limit],
            )
            last = last_within(sizes, max_bytes)
            if last is None:
                return []
            clauses.append("id <= ?")
            params.append(last)
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [event_from_row(row) for row in rows]

    async def last_event_id(self) -> int:
        rows = await self._read("SELECT coalesce(max(id), 0) FROM events")
        return int(next(iter(rows))[0])

    async def usage(self, api_key_id: str, start: str | None, end: str | None) -> list[UsageRow]:
        clauses = ["api_key_id = ?"]
        params: list[Any] = [api_key_id]
        if start is not None:
            clauses.append("created_at >= ?")
            params.append(start)
        if end is not None:
            clauses.append("created_at < ?")
            params.append(end)
        rows = await self._read(
            f"SELECT substr(created_at, 1, 10) AS day, model, status, count(*), {_COST_SUMS} FROM jobs "
            f"WHERE {' AND '.join(clauses)} GROUP BY day, model, status ORDER BY day, model, status",
            params,
        )
        return [UsageRow.from_row(row) for row in rows]

    # -- retention ---------------------------------------------------------------------------

    async def prunable(self, before: str) -> PruneCounts:
        rows = await self._read(
            f"SELECT (SELECT count(*) FROM jobs WHERE {_FINISHED_BEFORE}), "
            f"(SELECT count(*) FROM events WHERE job_id IN (SELECT id FROM jobs WHERE {_FINISHED_BEFORE})), "
            "(SELECT count(*) FROM webhook_receipts WHERE received_at < ?), "
            "(SELECT count(*) FROM idempotency_keys WHERE created_at < ?)",
            (before,) * 4,
        )
        jobs, events, receipts, keys = next(iter(rows))
        return PruneCounts(jobs=jobs, events=events, webhook_receipts=receipts, idempotency_keys=keys)

    async def prune(self, before: str, *, batch_size: int = 500) -> PruneCounts:
        async def rows(table: str, column: str) -> tuple[int, int]:
            async with self._transaction() as conn:
                cursor = await conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)",
                    (before, batch_size),
                )
                return cursor.rowcount, 0

        async def jobs() -> tuple[int, int]:
            async with self._transaction() as conn:
                found = await conn.execute_fetchall(
                    f"SELECT id FROM jobs WHERE {_FINISHED_BEFORE} LIMIT ?", (before, batch_size)
                )
                ids = [row[0] for row in found]
                if not ids:
                    return 0, 0
                marks = ", ".join("?" * len(ids))
                events = (await conn.execute(f"DELETE FROM events WHERE job_id IN ({marks})", ids)).rowcount
                await conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
                return len(ids), events

        return await prune_in_batches(
            batch_size,
            self.prune_pause,
            keys=lambda: rows("idempotency_keys", "created_at"),
            receipts=lambda: rows("webhook_receipts", "received_at"),
            jobs=jobs,
        )

    # -- backup and restore ------------------------------------------------------------------

    async def backup(
        self, target: str | Path, progress: BackupProgress | None = None, *, overwrite: bool = False
    ) -> BackupReport:
        source = Path(self._path)
        return await _in_thread(lambda step: _backup(source, Path(target), step, overwrite=overwrite), progress)

    async def restore(self, source: str | Path, progress: BackupProgress | None = None) -> BackupReport:
        if self._writer is not None:
            raise StorageError("close the store before restoring into its database")
        newest = migrations.newest("sqlite")
        database = Path(self._path)
        return await _in_thread(lambda step: _restore(Path(source), database, step, newest=newest), progress)


_Step = Callable[[int, int, int], object]
"""The progress callback of sqlite3.Connection.backup: (status, remaining pages, total pages)."""


class _Abandoned(Exception):
    """Raised from a copy's progress callback to abort it: sqlite3 then rolls the copy back."""


async def _in_thread(work: Callable[[_Step], BackupReport], progress: BackupProgress | None) -> BackupReport:
    """Run a file copy in a worker thread, reporting its progress on the event loop."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def step(status: int, remaining: int, total: int) -> None:
        if stop.is_set():
            raise _Abandoned
        if progress is not None:
            loop.call_soon_threadsafe(progress, total - remaining, total)

    try:
        with _translated():
            return await asyncio.to_thread(work, step)
    except asyncio.CancelledError:
        stop.set()  # a thread cannot be cancelled; it stops at its next step
        raise


def _backup(source: Path, target: Path, step: _Step, *, overwrite: bool) -> BackupReport:
    _require_file(source)
    if target.resolve() in _database_files(source):
        raise StorageError("the backup cannot be written over the database itself")
    if target.is_dir():
        raise StorageError(f"{target} is a directory; give a file name")
    if target.exists() and not overwrite:
        raise StorageError(f"{target} already exists")
    if not target.parent.is_dir():
        raise StorageError(f"directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")  # the target appears only once the copy is verified
    _remove_files(partial)
    try:
        with closing(_connect_existing(source)) as src, closing(sqlite3.connect(partial)) as dst:
            # A read transaction held across steps pins one snapshot. Without it, every commit by another
            # connection restarts the copy, and a busy service can keep it from ever finishing.
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master")
            src.backup(dst, pages=_COPY_STEP_PAGES, progress=step)
            src.execute("COMMIT")
        report = _verify(partial)
        os.replace(partial, target)
    except BaseException:
        _remove_files(partial)
        raise
    return msgspec.structs.replace(report, path=str(target))


def _restore(source: Path, database: Path, step: _Step, *, newest: int) -> BackupReport:
    _require_file(source)
    if source.resolve() in _database_files(database):
        raise StorageError("the backup is the database itself")
    found = _verify(source)
    if found.schema_version > newest:
        raise StorageError(
            f"{source} has schema version {found.schema_version}, newer than this Reelay knows ({newest}); "
            "restore it with the version that wrote it"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(database, isolation_level=None, timeout=1.0)) as dst:
        # In WAL mode every open connection holds a shared lock on the file for as long as it is open, so an
        # exclusive lock is granted only when no other connection on this host has the database open.
        # Exclusive locking mode keeps it until this connection closes.
        dst.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            dst.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(
                f"{database} is in use: stop the service and any other reelay command, then restore"
            ) from exc
        dst.execute("COMMIT")
        with closing(_connect_existing(source)) as src:
            # One transaction on the destination: interrupted, it rolls back to the old database.
            src.backup(dst, pages=_COPY_STEP_PAGES, progress=step)
    return _verify(database)


def _verify(path: Path) -> BackupReport:
    """Check a database file's integrity and count what it holds."""
    with closing(_connect_existing(path)) as conn:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked or unreadable: about access, not about what the file holds
            raise StorageError(f"{path} is not a SQLite database ({exc})") from exc
        if problems != ["ok"]:
            raise StorageUnavailable(f"{path} fails its integrity check: {'; '.join(problems[:5])}")
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"schema_migrations", "jobs", "events"} <= tables:
            raise StorageError(f"{path} is not a Reelay database")
        version, jobs, events = conn.execute(
            "SELECT (SELECT max(version) FROM schema_migrations), (SELECT count(*) FROM jobs), "
            "(SELECT count(*) FROM events)"
        ).fetchone()
    # Measured after closing: the last connection folds the WAL into the file.
    return BackupReport(
        path=str(path), size_bytes=path.stat().st_size, jobs=jobs, events=events, schema_version=version or 0
    )


def _connect_existing(path: Path) -> sqlite3.Connection:
    """A connection to a database file that must exist (sqlite3.connect would create an empty one)."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise StorageError(f"no database file at {path}")


def _database_files(path: Path) -> set[Path]:
    """The database file and the journal files SQLite keeps beside it."""
    resolved = path.resolve()
    return {resolved, *(resolved.with_name(resolved.name + suffix) for suffix in ("-wal", "-shm", "-journal"))}


def _remove_files(path: Path) -> None:
    for name in _database_files(path):
        name.unlink(missing_ok=True)


T = TypeVar("T")
_Work = Callable[[sqlite3.Connection, list[EventRecord]], T]
"""A write run on the writer's thread inside a transaction; it appends the events it logs to the list."""


def _select_job(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else job_from_row(row)


class _DecimalSum:
    """SQL `decimal_sum(text)`: sums JSON number texts exactly (SQLite's own sum() goes through float)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = Decimal(value) if self.total is None else self.total + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)


def _task_owner(db: sqlite3.Connection, job: JobRecord) -> str | None:
    """The other job that holds the provider task id `job` names, if any."""
    row = db.execute(
        "SELECT id FROM jobs WHERE provider = ? AND provider_task_id = ? AND id != ?",
        (job.provider, job.provider_task_id, job.id),
    ).fetchone()
    return None if row is None else str(row[0])


def _commit(db: sqlite3.Connection) -> None:
    # A function of its own so a test can make the COMMIT fail as a full disk would.
    db.execute("COMMIT")


def _run_batch(db: sqlite3.Connection, works: list[_Work[Any]]) -> tuple[list[tuple[bool, Any]], list[EventRecord]]:
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


# SQLite's own limits on one statement (SQLITE_ERROR, like a real fault): what the request asked was too big.
_LIMIT_MESSAGES = (
    "expression tree is too large",
    "too many sql variables",
    "too many terms in compound select",
    "too many arguments on function",
    "like or glob pattern too complex",
    "parser stack overflow",
    "string or blob too big",
)


class _translated:
    """Turns sqlite3 driver errors and file-system errors into StorageUnavailable at the edge, and what the
    request itself made SQLite refuse into QueryRejected."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.IntegrityError):
            return  # a programming error or a constraint the caller handles; let it through
        # DataError is SQLITE_TOOBIG; OverflowError and UnicodeEncodeError come from binding a value (a huge
        # integer, a lone surrogate) that SQLite cannot hold.
        if isinstance(exc, sqlite3.DataError | OverflowError | UnicodeEncodeError) or (
            isinstance(exc, sqlite3.OperationalError) and str(exc).lower().startswith(_LIMIT_MESSAGES)
        ):
            raise QueryRejected(f"sqlite: {exc}") from exc
        if isinstance(exc, sqlite3.Error):
            raise StorageUnavailable(f"sqlite: {exc}") from exc
        if isinstance(exc, OSError):
            raise StorageUnavailable(str(exc)) from exc
