"""The storage contract on one SQLite file, on aiosqlite: one writer connection, one reader, WAL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from storage import archives, health, migrations, webhooks, writes
from storage.base import BackupProgress, Clock, Decide, EventListener, JobEncoder
from storage.errors import SchemaOutdated, StorageError, StorageUnavailable
from storage.leases import due_for_dispatch, due_for_poll
from storage.records import (
    COST_FIELDS,
    ApiKeyRecord,
    BackupReport,
    BudgetTotals,
    CreateOutcome,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PruneCounts,
    Receipt,
    UpdateOutcome,
    UsageRow,
)
from storage.retention import (
    KEY_EVENTS_BEFORE,
    BeforeJobsPruned,
    finished_before,
    prune_in_batches,
    with_assets_before,
)
from storage.rows import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    KEY_COLUMNS,
    SELECT_BUDGET,
    budget_from_row,
    event_from_row,
    inline_from_row,
    iso_timestamp,
    job_from_row,
    key_from_row,
    key_values,
    last_within,
)
from storage.secrets import SecretMethods
from storage.sqlite import backup
from storage.sqlite.errors import translated
from storage.sqlite.steps import SqliteReader, SqliteSql, SqliteSteps, run_to_end, sqlite_dialect
from storage.sqlite.writer import GroupCommitWriter

log = logging.getLogger("reelay.storage")

T = TypeVar("T")

# Per cost figure: its exact sum (over the JSON number's own text) and how many jobs have it.
_COST_SUMS = ", ".join(
    f"decimal_sum(CASE WHEN json_type(cost, '$.{field}') IN ('integer', 'real') THEN cost -> '$.{field}' END), "
    f"count(CASE WHEN json_type(cost, '$.{field}') IN ('integer', 'real') THEN 1 END)"
    for field in COST_FIELDS
)
_FINISHED_BEFORE = finished_before("?")
_WITH_ASSETS_BEFORE = with_assets_before("?", ("?", "?"), "json_type(output, '$.{path}')")
_TESTS_BEFORE = webhooks.TESTS_BEFORE.format(cutoff="?")
_RELEASE_DELIVERIES = webhooks.release_sql(None)
_RELEASE_ARCHIVES = archives.release_sql(None)
_SELECT_BUDGET = sqlite_dialect(SELECT_BUDGET)
_KEY_EVENTS_BEFORE = KEY_EVENTS_BEFORE.format(cutoff="?")
_PRUNE_KEY_EVENTS = f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {_KEY_EVENTS_BEFORE} LIMIT ?)"
Hook = Callable[[webhooks.Sql], Coroutine[Any, Any, T]]
Look = Callable[[webhooks.Reader], Coroutine[Any, Any, T]]


def sqlite_path(url: str) -> str:
    """The file path of a `sqlite:///relative` or `sqlite:////absolute` URL."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared between connections; give a file")
    return path


class SqliteStore(webhooks.WebhookMethods, health.HealthMethods, SecretMethods, archives.ArchiveMethods):
    """The storage contract on one SQLite file.

    Writes go through one connection (GroupCommitWriter), so commit order is event-id order and listeners
    are called in that order; reads use a second connection and never see uncommitted data.
    """

    prune_pause = 0.05
    """Seconds between prune batches: a writer in another process busy-waits for the lock and needs a gap."""

    def __init__(
        self,
        path: str | Path,
        encode_job: JobEncoder,
        *,
        clock: Clock,
        synchronous: str = "FULL",
        first_delivery_delay: float = 0.0,
        archive: bool = False,
    ) -> None:
        self._path = str(path)
        self._first_delivery_delay = first_delivery_delay
        self._archive = archive
        self._encode_job = encode_job
        self._clock = clock
        self._synchronous = synchronous
        self._writer = GroupCommitWriter(self._announce)
        self._reader: aiosqlite.Connection | None = None
        self._listeners: list[EventListener] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer.connection is not None:
            return
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with translated():
                self._writer.connection = await self._connect()
                await self._writer.connection.execute("PRAGMA journal_mode = WAL")
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
        await self._writer.close()  # writes already queued are finished first
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._writer.locked() as writer:
            with translated():
                await writer.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                done = {row[0] for row in await writer.execute_fetchall("SELECT version FROM schema_migrations")}
                for version, name, sql in migrations.load("sqlite"):
                    if version in done:
                        continue
                    applied_at = iso_timestamp(self._clock())
                    # executescript commits first, so the whole migration runs in its own BEGIN...COMMIT.
                    try:
                        await writer.executescript(
                            f"BEGIN IMMEDIATE;\n{sql}\n"
                            f"INSERT INTO schema_migrations VALUES ({version}, '{name}', '{applied_at}');\nCOMMIT;"
                        )
                    except BaseException:
                        await asyncio.shield(writer.rollback())  # a failed script leaves its BEGIN open
                        raise
                    applied.append(name)
        return applied

    async def check(self) -> None:
        rows = await self._read("SELECT max(version) FROM schema_migrations")
        newest = migrations.newest("sqlite")
        current = next(iter(rows))[0]
        if current is None or current < newest:
            raise SchemaOutdated(f"schema version {current}, code expects {newest}; run `reelay migrate`")
        # A write probe: a full disk or a read-only file must make the store not ready.
        async with self._writer.transaction() as conn:
            await conn.execute("UPDATE schema_migrations SET name = name WHERE version = ?", (newest,))

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    # -- plumbing ----------------------------------------------------------------------------

    def _announce(self, events: list[EventRecord]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # the write is committed; one listener must not hide it or starve others
                log.exception("storage.listener_failed")

    async def _write(self, write: Callable[[SqliteSteps], Coroutine[Any, Any, T]]) -> T:
        """Run a shared write (storage.writes) with SQLite's steps, in the writer's next group commit."""

        def work(db: sqlite3.Connection, logged: list[EventRecord]) -> T:
            steps = SqliteSteps(db, logged, self._encode_job, self._clock, self._first_delivery_delay, self._archive)
            return run_to_end(write(steps))

        return await self._writer.run(work)

    async def _hook(self, write: Hook[T]) -> T:
        """Run a shared webhook write (storage.webhooks) on the writer's thread, in one hop and one transaction."""
        return await self._writer.run(lambda db, _: run_to_end(write(SqliteSql(db))))

    async def _look(self, read: Look[T]) -> T:
        """Run a shared webhook read (storage.webhooks) on the reading connection."""
        reader = self._reader
        if reader is None:
            raise StorageUnavailable("store is not open")
        with translated():
            return await read(SqliteReader(reader))

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> Iterable[sqlite3.Row]:
        reader = self._reader
        if reader is None:
            raise StorageUnavailable("store is not open")
        with translated():
            return await reader.execute_fetchall(sql, tuple(params))

    # -- API keys ----------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        async with self._writer.transaction() as conn:
            await conn.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", key_values(key, str)
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._read(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", [key_id])
        return next((key_from_row(row) for row in rows), None)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._read(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [key_from_row(row) for row in rows]

    async def set_api_key_budget(
        self, key_id: str, *, usd: Decimal | None, credits: Decimal | None, period: str | None
    ) -> bool:
        async with self._writer.transaction() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET budget_usd = ?, budget_credits = ?, budget_period = ? WHERE id = ?",
                (None if usd is None else str(usd), None if credits is None else str(credits), period, key_id),
            )
            return cursor.rowcount == 1

    async def budget_totals(self, api_key_id: str, period: str) -> BudgetTotals:
        rows = await self._read(_SELECT_BUDGET, (api_key_id, period))
        return budget_from_row(next(iter(rows), None), api_key_id, period)

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        async with self._writer.transaction() as conn:
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
        return await self._write(lambda steps: writes.create_job(steps, job, event_type, idempotency, inline))

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
        received_at = iso_timestamp(self._clock())
        return await self._write(lambda steps: writes.update_job(steps, job_id, decide, receipt, received_at))

    async def finish_archive(self, job_id: str, decide: Decide, items: list[dict[str, Any]]) -> UpdateOutcome:
        received_at = iso_timestamp(self._clock())
        return await self._write(lambda steps: writes.finish_archive(steps, job_id, decide, items, received_at))

    # -- outbox and polling ------------------------------------------------------------------

    async def _claim(
        self, due: str, order: str, now: float, limit: int, lease_seconds: float, names: tuple[str, ...] = ()
    ) -> list[JobRecord]:
        async with self._writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {due} ORDER BY {order} LIMIT ?2", (now, limit, *names)
            )
            jobs = [job_from_row(row) for row in rows]
            if jobs:
                until = now + lease_seconds
                await conn.executemany("UPDATE jobs SET lease_until = ? WHERE id = ?", [(until, j.id) for j in jobs])
                jobs = [msgspec.structs.replace(j, lease_until=until) for j in jobs]
        return jobs

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(due_for_dispatch("?1"), "next_attempt_at", now, limit, lease_seconds)

    async def claim_polls(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        providers: Sequence[str] | None = None,
        exclude: bool = False,
    ) -> list[JobRecord]:
        due = due_for_poll("?1")
        names = tuple(providers or ())
        if providers is not None:
            marks = ", ".join(f"?{i}" for i in range(3, 3 + len(names))) or "NULL"
            due += f" AND provider {'NOT IN' if exclude else 'IN'} ({marks})"
        return await self._claim(due, "next_poll_at", now, limit, lease_seconds, names)

    async def release_leases(self) -> int:
        async with self._writer.transaction() as conn:
            cursor = await conn.execute("UPDATE jobs SET lease_until = NULL WHERE lease_until IS NOT NULL")
            deliveries = await conn.execute(_RELEASE_DELIVERIES)
            copies = await conn.execute(_RELEASE_ARCHIVES)
            return cursor.rowcount + deliveries.rowcount + copies.rowcount

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
            f"(SELECT count(*) FROM events WHERE job_id IN (SELECT id FROM jobs WHERE {_FINISHED_BEFORE})) + "
            f"(SELECT count(*) FROM events WHERE {_KEY_EVENTS_BEFORE}), "
            "(SELECT count(*) FROM webhook_receipts WHERE received_at < ?), "
            "(SELECT count(*) FROM idempotency_keys WHERE created_at < ?), "
            "(SELECT count(*) FROM webhook_deliveries WHERE job_id IN "
            f"(SELECT id FROM jobs WHERE {_FINISHED_BEFORE})), "
            f"(SELECT count(*) FROM webhook_deliveries WHERE {_TESTS_BEFORE})",
            (before,) * 7,
        )
        jobs, events, receipts, keys, deliveries, tests = next(iter(rows))
        return PruneCounts(
            jobs=jobs, events=events, webhook_receipts=receipts, idempotency_keys=keys, deliveries=deliveries + tests
        )

    async def prune(
        self, before: str, *, batch_size: int = 500, before_jobs_pruned: BeforeJobsPruned | None = None
    ) -> PruneCounts:
        async def rows(table: str, column: str) -> int:
            async with self._writer.transaction() as conn:
                cursor = await conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ? LIMIT ?)",
                    (before, batch_size),
                )
                return cursor.rowcount

        async def keys() -> tuple[int, PruneCounts]:
            removed = await rows("idempotency_keys", "created_at")
            return removed, PruneCounts(idempotency_keys=removed)

        async def receipts() -> tuple[int, PruneCounts]:
            removed = await rows("webhook_receipts", "received_at")
            return removed, PruneCounts(webhook_receipts=removed)

        async def jobs() -> tuple[int, PruneCounts]:
            if before_jobs_pruned is not None:  # outside the write lock: it may take a while (an S3 bucket)
                found = await self._read(f"SELECT id FROM jobs WHERE {_FINISHED_BEFORE} LIMIT ?", (before, batch_size))
                if ids := [row[0] for row in found]:
                    await before_jobs_pruned(ids)
            async with self._writer.transaction() as conn:
                if before_jobs_pruned is None:
                    found = await conn.execute_fetchall(
                        f"SELECT id FROM jobs WHERE {_FINISHED_BEFORE} LIMIT ?", (before, batch_size)
                    )
                    ids = [row[0] for row in found]
                if not ids:
                    return 0, PruneCounts()
                marks = ", ".join("?" * len(ids))
                events = (await conn.execute(f"DELETE FROM events WHERE job_id IN ({marks})", ids)).rowcount
                deliveries = await _delete_deliveries(conn, f"job_id IN ({marks})", ids)
                await conn.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
                return len(ids), PruneCounts(jobs=len(ids), events=events, deliveries=deliveries)

        async def tests() -> tuple[int, PruneCounts]:
            async with self._writer.transaction() as conn:
                where = f"id IN (SELECT id FROM webhook_deliveries WHERE {_TESTS_BEFORE} ORDER BY created_at LIMIT ?)"
                removed = await _delete_deliveries(conn, where, (before, batch_size))
                # Events of a key alone (budget.threshold) go by their age, with the deliveries they made.
                events = (await conn.execute(_PRUNE_KEY_EVENTS, (before, batch_size))).rowcount
                return max(removed, events), PruneCounts(deliveries=removed, events=events)

        return await prune_in_batches(
            batch_size, self.prune_pause, keys=keys, receipts=receipts, jobs=jobs, tests=tests
        )

    async def jobs_with_assets(
        self, completed_before: str, *, after: tuple[str, str] = ("", ""), limit: int
    ) -> list[tuple[str, str]]:
        rows = await self._read(
            f"SELECT completed_at, id FROM jobs WHERE {_WITH_ASSETS_BEFORE} ORDER BY completed_at, id LIMIT ?",
            (completed_before, *after, limit),
        )
        return [(row[0], row[1]) for row in rows]

    # -- backup and restore ------------------------------------------------------------------

    async def backup(
        self, target: str | Path, progress: BackupProgress | None = None, *, overwrite: bool = False
    ) -> BackupReport:
        return await backup.backup(Path(self._path), Path(target), progress, overwrite=overwrite)

    async def restore(self, source: str | Path, progress: BackupProgress | None = None) -> BackupReport:
        if self._writer.connection is not None:
            raise StorageError("close the store before restoring into its database")
        newest = migrations.newest("sqlite")
        return await backup.restore(Path(source), Path(self._path), progress, newest=newest)


async def _delete_deliveries(conn: aiosqlite.Connection, where: str, params: Iterable[Any]) -> int:
    """Delete the deliveries `where` selects, with their attempts; returns how many deliveries."""
    params = tuple(params)
    await conn.execute(
        f"DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE {where})", params
    )
    return (await conn.execute(f"DELETE FROM webhook_deliveries WHERE {where}", params)).rowcount


class _DecimalSum:
    """SQL `decimal_sum(text)`: sums JSON number texts exactly (SQLite's own sum() goes through float)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = Decimal(value) if self.total is None else self.total + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else str(self.total)
