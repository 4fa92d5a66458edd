"""The storage contract on a PostgreSQL database, on asyncpg, for one or several replicas sharing it.

Reads and writes go through a connection pool; the event feed (`storage.postgres.feed`) hands every committed
event, whichever replica wrote it, to this process's listeners.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from storage import archives, health, migrations, webhooks, writes
from storage.base import Clock, Decide, EventListener, JobEncoder
from storage.errors import SchemaOutdated, StorageUnavailable, TaskTaken
from storage.leases import as_claimed, due_for_dispatch, due_for_poll
from storage.postgres.errors import translated
from storage.postgres.feed import EventFeed
from storage.postgres.limits import LimitMethods
from storage.postgres.steps import PostgresSql, PostgresSteps
from storage.records import (
    COST_FIELDS,
    ApiKeyRecord,
    BudgetTotals,
    CreateOutcome,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PollReschedule,
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
    json_text,
    key_from_row,
    key_values,
    last_within,
)
from storage.secrets import SecretMethods

# Transaction-level advisory lock key ("REELAY" and a number): replicas starting together migrate one at a time.
_MIGRATION_LOCK = 0x5245454C41590002

_CLAIM = (
    "UPDATE jobs SET lease_until = $2, lease_owner = $3 WHERE id IN "
    "(SELECT id FROM jobs WHERE {due} ORDER BY {order}, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
    f"RETURNING {JOB_COLUMNS}"
)
_CLAIM_DISPATCH = _CLAIM.format(due=due_for_dispatch("$1"), order="next_attempt_at")
_CLAIM_POLLS = _CLAIM.format(due=due_for_poll("$1"), order="next_poll_at")
_CLAIM_POLLS_OF = _CLAIM.format(due=due_for_poll("$1") + " AND provider = ANY($5::text[])", order="next_poll_at")
_CLAIM_POLLS_NOT_OF = _CLAIM.format(
    due=due_for_poll("$1") + " AND NOT (provider = ANY($5::text[]))", order="next_poll_at"
)
# Status checks that changed nothing, in one statement: each job still as its poller (this instance) claimed it
# is rescheduled; those that changed meanwhile only lose the lease, if it is still this instance's.
_RESCHEDULE_POLLS = """
WITH item AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::int[], $6::float8[], $7::int[],
                         $8::text[], $9::float8[])
        AS t(id, lease_until, provider_task_id, status, stage, next_poll_at, poll_attempts, updated_at, due)
), moved AS (
    UPDATE jobs SET next_poll_at = item.due, poll_attempts = jobs.poll_attempts + 1, lease_until = NULL,
        lease_owner = NULL
    FROM item
    WHERE jobs.id = item.id AND jobs.lease_owner = $10 AND jobs.lease_until = item.lease_until
        AND jobs.provider_task_id IS NOT DISTINCT FROM item.provider_task_id AND jobs.status = item.status
        AND jobs.stage = item.stage AND jobs.next_poll_at IS NOT DISTINCT FROM item.next_poll_at
        AND jobs.poll_attempts = item.poll_attempts AND jobs.updated_at = item.updated_at
    RETURNING jobs.id
), released AS (
    UPDATE jobs SET lease_until = NULL, lease_owner = NULL
    FROM item
    WHERE jobs.id = item.id AND jobs.lease_owner = $10 AND jobs.lease_until = item.lease_until
        AND NOT EXISTS (SELECT 1 FROM moved WHERE moved.id = jobs.id)
    RETURNING jobs.id
)
SELECT count(*) FROM moved
"""

# Per cost figure: its exact sum (numeric, never float8) and how many jobs have it. Only numbers are summed: one
# odd value must not make the whole report fail.
_COST_SUMS = ", ".join(
    f"sum(CASE WHEN jsonb_typeof(cost -> '{field}') = 'number' THEN (cost ->> '{field}')::numeric END), "
    f"count(CASE WHEN jsonb_typeof(cost -> '{field}') = 'number' THEN 1 END)"
    for field in COST_FIELDS
)


class _HookFailed(Exception):
    """Carries a prune hook's error through the translation of database errors, unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_FINISHED_BEFORE = finished_before("$1")
_WITH_ASSETS_BEFORE = with_assets_before("$1", ("$2", "$3"), "json_typeof(output -> '{path}')")
_TESTS_BEFORE = webhooks.TESTS_BEFORE.format(cutoff="$1")
_RELEASE_DELIVERIES = webhooks.release_sql("$1")
_RELEASE_ARCHIVES = archives.release_sql("$1")
_KEY_EVENTS_BEFORE = KEY_EVENTS_BEFORE.format(cutoff="$1")
_PRUNE_KEY_EVENTS = f"DELETE FROM events WHERE id IN (SELECT id FROM events WHERE {_KEY_EVENTS_BEFORE} LIMIT $2)"
_DELETE_ATTEMPTS = "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE {where})"
T = TypeVar("T")
Hook = Callable[[webhooks.Sql], Coroutine[Any, Any, T]]
_PRUNE_KEYS = (
    "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN "
    "(SELECT api_key_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)
_PRUNE_RECEIPTS = (
    "DELETE FROM webhook_receipts WHERE (provider, receipt_key) IN "
    "(SELECT provider, receipt_key FROM webhook_receipts WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


_JOB_COLUMNS_OF_JOBS = ", ".join(f"jobs.{column}" for column in JOB_COLUMNS.split(", "))


def _row_count(status: str) -> int:
    """The number of rows a command touched, from its status tag ("UPDATE 3", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


class _Params:
    """Bound values of a query composed clause by clause: `bind` returns the placeholder of the value."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def bind(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


class PostgresStore(
    webhooks.WebhookMethods, health.HealthMethods, LimitMethods, SecretMethods, archives.ArchiveMethods
):
    """The storage contract on a PostgreSQL database that several processes may share.

    Jobs are leased with `FOR UPDATE SKIP LOCKED`, so two workers never hold the same job; each lease records
    the store instance that took it (`lease_owner`), and `release_leases` drops only this instance's leases.
    """

    prune_pause = 0.02
    """Seconds between prune batches, so a long prune leaves the server room for the service's own writes."""

    feed_check_seconds = 5.0
    """Longest wait between reads of the event log: bounds the delay of a lost notification and finds a dead peer."""

    reconnect_delays = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
    """Waits before each new attempt to open the LISTEN connection after it was lost (the last one repeats)."""

    def __init__(
        self,
        dsn: str,
        encode_job: JobEncoder,
        *,
        clock: Clock,
        min_connections: int = 1,
        max_connections: int = 10,
        timeout: float = 30.0,
        first_delivery_delay: float = 0.0,
        archive: bool = False,
    ) -> None:
        self._dsn = dsn
        self._first_delivery_delay = first_delivery_delay
        self._archive = archive
        self._encode_job = encode_job
        self._clock = clock
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._feed: EventFeed | None = None
        self._listeners: list[EventListener] = []
        self._in_flight = 0  # operations that have started, connection or not
        self._idle = asyncio.Event()
        self._idle.set()
        # Unique per instance: a restarted replica must not take over leases a live one still works on.
        self.lease_owner = f"{socket.gethostname()[:24]}/{os.getpid()}/{secrets.token_hex(4)}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            with translated():
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_connections,
                    max_size=self._max_connections,
                    timeout=min(self._timeout, 10.0),
                    command_timeout=self._timeout,
                    server_settings={"application_name": "reelay"},
                )
                await self.migrate()
                newest = await self.last_event_id()
                feed = EventFeed(
                    self._connect_feed,
                    self._listeners,
                    check_seconds=self.feed_check_seconds,
                    reconnect_delays=self.reconnect_delays,
                )
                await feed.start(newest)
                self._feed = feed
        except StorageUnavailable as exc:
            await self.close()  # half-open would make the next open() a no-op
            raise StorageUnavailable(f"cannot open the PostgreSQL database: {exc.__cause__ or exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None  # from here on new operations fail: the store is not open
        if pool is not None:
            try:
                # Operations already started finish first, those still waiting for a connection included;
                # then the pool waits for every connection to come back.
                async with asyncio.timeout(self._timeout):
                    await self._idle.wait()
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.stop()

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._connection() as conn:
            # Read first: a replica starting on a current schema writes nothing and waits for nobody.
            if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
                done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
                if all(version in done for version, _, _ in migrations.load("postgresql")):
                    return applied
            # Replicas starting together migrate one at a time; each re-checks what the previous one applied.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)"
                )
            for version, name, sql in migrations.load("postgresql"):
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                    if await conn.fetchval("SELECT true FROM schema_migrations WHERE version = $1", version):
                        continue
                    await conn.execute(sql)  # no arguments: the simple protocol, which runs several statements
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        version,
                        name,
                        iso_timestamp(self._clock()),
                    )
                applied.append(name)
        return applied

    async def check(self) -> None:
        newest = migrations.newest("postgresql")
        async with self._connection() as conn:
            current = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            if current is None or current < newest:
                raise SchemaOutdated(f"schema version {current}, code expects {newest}; run `reelay migrate`")
            # A write probe: a standby, a read-only database or a full disk must make the store not ready.
            async with conn.transaction():
                await conn.execute("UPDATE schema_migrations SET name = name WHERE version = $1", newest)

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    # -- plumbing ----------------------------------------------------------------------------

    async def _connect_feed(self) -> asyncpg.Connection:
        """A connection of its own for LISTEN: a pooled one would be handed to other work between queries."""
        return await asyncpg.connect(
            self._dsn,
            timeout=min(self._timeout, 10.0),
            command_timeout=self._timeout,
            # Operators (and tests) find each process's feed in pg_stat_activity by this name.
            server_settings={"application_name": f"reelay-events {self.lease_owner}"},
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("store is not open")
        self._in_flight += 1
        self._idle.clear()
        try:
            with translated():
                async with pool.acquire(timeout=self._timeout) as conn:
                    yield conn
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[PostgresSteps]:
        """A transaction; events logged in it are announced once it commits, before the caller goes on."""
        logged: list[EventRecord] = []
        async with self._connection() as conn:
            async with conn.transaction():
                yield PostgresSteps(
                    conn, logged, self._encode_job, self._clock, self._first_delivery_delay, self._archive
                )
            if logged and self._feed is not None:
                await self._feed.committed(conn, logged)

    async def _hook(self, operation: Hook[T]) -> T:
        """Run a shared webhook operation (storage.webhooks) in one transaction."""
        async with self._connection() as conn, conn.transaction():
            return await operation(PostgresSql(conn, self.lease_owner))

    async def _look(self, read: Hook[T]) -> T:
        """Run a shared webhook read (storage.webhooks) on a pooled connection."""
        async with self._connection() as conn:
            return await read(PostgresSql(conn, self.lease_owner))

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
            return rows

    # -- API keys ----------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                *key_values(key, lambda value: value),
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return next((key_from_row(row) for row in rows), None)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [key_from_row(row) for row in rows]

    async def set_api_key_budget(
        self, key_id: str, *, usd: Decimal | None, credits: Decimal | None, period: str | None
    ) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE api_keys SET budget_usd = $1, budget_credits = $2, budget_period = $3 WHERE id = $4",
                usd,
                credits,
                period,
                key_id,
            )
        return _row_count(status) == 1

    async def budget_totals(self, api_key_id: str, period: str) -> BudgetTotals:
        rows = await self._fetch(SELECT_BUDGET, api_key_id, period)
        return budget_from_row(next(iter(rows), None), api_key_id, period)

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", at, key_id
            )
        return _row_count(status) == 1

    # -- jobs --------------------------------------------------------------------------------

    async def create_job(
        self,
        job: JobRecord,
        event_type: str,
        *,
        idempotency: IdempotencyClaim | None = None,
        inline: Mapping[str, str] | None = None,
    ) -> CreateOutcome:
        async with self._write() as steps:
            return await writes.create_job(steps, job, event_type, idempotency, inline)

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return next((job_from_row(row) for row in rows), None)

    async def inline_data(self, job_id: str) -> dict[str, str]:
        rows = await self._fetch("SELECT data_uris FROM job_inline WHERE job_id = $1", job_id)
        return inline_from_row(next(iter(rows), None))

    async def find_job_by_task(self, provider: str, provider_task_id: str) -> JobRecord | None:
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE provider = $1 AND provider_task_id = $2",
            provider,
            provider_task_id,
        )
        return next((job_from_row(row) for row in rows), None)

    async def list_jobs(
        self, api_key_id: str, filters: JobFilter, *, limit: int, before_id: str | None = None
    ) -> list[JobRecord]:
        # With metadata filters, the first pair's index rows (job_metadata, newest first) drive the read: the
        # other filters are tested on those jobs only, and the page ends after `limit` of them.
        params = _Params(api_key_id)
        pairs = list(filters.metadata.items())
        source, order = "jobs", "jobs.id"
        clauses = ["jobs.api_key_id = $1"]
        if pairs:
            source, order = "job_metadata AS m JOIN jobs ON jobs.id = m.job_id", "m.job_id"
            first_key, first_value = (params.bind(part) for part in pairs[0])
            clauses += ["m.api_key_id = $1", f"m.key = {first_key}", f"m.value = {first_value}"]
        for column, value in (
            ("status", filters.status),
            ("model", filters.model),
            ("provider", filters.provider),
        ):
            if value is not None:
                clauses.append(f"jobs.{column} = {params.bind(value)}")
        if len(pairs) > 1:
            # Containment compares decoded keys and values: keys are taken literally, never as paths.
            clauses.append(f"jobs.metadata @> {params.bind(json_text(dict(pairs[1:])))}::jsonb")
        if before_id is not None:
            clauses.append(f"{order} < {params.bind(before_id)}")
        rows = await self._fetch(
            f"SELECT {_JOB_COLUMNS_OF_JOBS} FROM {source} WHERE {' AND '.join(clauses)} "
            f"ORDER BY {order} DESC LIMIT {params.bind(limit)}",
            *params.values,
        )
        return [job_from_row(row) for row in rows]

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        received_at = iso_timestamp(self._clock())
        try:
            async with self._write() as steps:
                return await writes.update_job(steps, job_id, decide, receipt, received_at)
        except TaskTaken as taken:
            # The failed statement aborted the transaction: the task's holder is read after its rollback.
            owner = await self.find_job_by_task(taken.provider, taken.provider_task_id)
            raise TaskTaken(taken.provider, taken.provider_task_id, None if owner is None else owner.id) from None

    async def finish_archive(self, job_id: str, decide: Decide, items: list[dict[str, Any]]) -> UpdateOutcome:
        received_at = iso_timestamp(self._clock())
        async with self._write() as steps:
            return await writes.finish_archive(steps, job_id, decide, items, received_at)

    # -- outbox and polling ------------------------------------------------------------------

    async def _claim(
        self, sql: str, order: str, now: float, limit: int, lease_seconds: float, *extra: Any
    ) -> list[JobRecord]:
        # One statement: rows another worker is claiming right now are skipped, never waited for nor taken twice.
        rows = await self._fetch(sql, now, now + lease_seconds, self.lease_owner, limit, *extra)
        jobs = [job_from_row(row) for row in rows]
        return sorted(jobs, key=lambda job: (getattr(job, order), job.id))  # RETURNING keeps no order

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(_CLAIM_DISPATCH, "next_attempt_at", now, limit, lease_seconds)

    async def claim_polls(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        providers: Sequence[str] | None = None,
        exclude: bool = False,
    ) -> list[JobRecord]:
        if providers is None:
            return await self._claim(_CLAIM_POLLS, "next_poll_at", now, limit, lease_seconds)
        sql = _CLAIM_POLLS_NOT_OF if exclude else _CLAIM_POLLS_OF
        return await self._claim(sql, "next_poll_at", now, limit, lease_seconds, list(providers))

    async def reschedule_polls(self, items: Sequence[PollReschedule]) -> int:
        if not items:
            return 0
        # By id: two batches (or a batch and a claim) lock their rows in the same order.
        rows = sorted((*as_claimed(i.job), i.next_poll_at) for i in items)
        async with self._connection() as conn:
            return int(await conn.fetchval(_RESCHEDULE_POLLS, *map(list, zip(*rows, strict=True)), self.lease_owner))

    async def release_leases(self) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
                "WHERE lease_owner = $1 AND lease_until IS NOT NULL",
                self.lease_owner,
            )
            deliveries = await conn.execute(_RELEASE_DELIVERIES, self.lease_owner)
            copies = await conn.execute(_RELEASE_ARCHIVES, self.lease_owner)
        return _row_count(status) + _row_count(deliveries) + _row_count(copies)

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
        params = _Params(after_id)
        clauses = ["id > $1"]
        if api_key_id is not None:
            clauses.append(f"api_key_id = {params.bind(api_key_id)}")
        if job_id is not None:
            clauses.append(f"job_id = {params.bind(job_id)}")
        if max_bytes is not None:
            # Sizes first (octet_length does not detoast a value), then only the events that fit.
            sized = _Params(*params.values)
            sizes = await self._fetch(
                f"SELECT id, octet_length(job) FROM events WHERE {' AND '.join(clauses)} "
                f"ORDER BY id LIMIT {sized.bind(limit)}",
                *sized.values,
            )
            last = last_within(sizes, max_bytes)
            if last is None:
                return []
            clauses.append(f"id <= {params.bind(last)}")
        rows = await self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} ORDER BY id LIMIT {params.bind(limit)}",
            *params.values,
        )
        return [event_from_row(row) for row in rows]

    async def last_event_id(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM events"))

    async def usage(self, api_key_id: str, start: str | None, end: str | None) -> list[UsageRow]:
        params = _Params(api_key_id)
        clauses = ["api_key_id = $1"]
        if start is not None:
            clauses.append(f"created_at >= {params.bind(start)}")
        if end is not None:
            clauses.append(f"created_at < {params.bind(end)}")
        rows = await self._fetch(
            f"SELECT substr(created_at, 1, 10) AS day, model, status, count(*), {_COST_SUMS} FROM jobs "
            f"WHERE {' AND '.join(clauses)} GROUP BY day, model, status ORDER BY day, model, status",
            *params.values,
        )
        return [UsageRow.from_row(row) for row in rows]

    # -- retention ---------------------------------------------------------------------------

    async def prunable(self, before: str) -> PruneCounts:
        rows = await self._fetch(
            f"SELECT (SELECT count(*) FROM jobs WHERE {_FINISHED_BEFORE}), "
            f"(SELECT count(*) FROM events WHERE job_id IN (SELECT id FROM jobs WHERE {_FINISHED_BEFORE})) + "
            f"(SELECT count(*) FROM events WHERE {_KEY_EVENTS_BEFORE}), "
            "(SELECT count(*) FROM webhook_receipts WHERE received_at < $1), "
            "(SELECT count(*) FROM idempotency_keys WHERE created_at < $1), "
            "(SELECT count(*) FROM webhook_deliveries WHERE job_id IN "
            f"(SELECT id FROM jobs WHERE {_FINISHED_BEFORE})), "
            f"(SELECT count(*) FROM webhook_deliveries WHERE {_TESTS_BEFORE})",
            before,
        )
        jobs, events, receipts, keys, deliveries, tests = rows[0]
        return PruneCounts(
            jobs=jobs, events=events, webhook_receipts=receipts, idempotency_keys=keys, deliveries=deliveries + tests
        )

    async def prune(
        self, before: str, *, batch_size: int = 500, before_jobs_pruned: BeforeJobsPruned | None = None
    ) -> PruneCounts:
        async def rows(sql: str) -> int:
            async with self._connection() as conn:
                return _row_count(await conn.execute(sql, before, batch_size))

        async def keys() -> tuple[int, PruneCounts]:
            removed = await rows(_PRUNE_KEYS)
            return removed, PruneCounts(idempotency_keys=removed)

        async def receipts() -> tuple[int, PruneCounts]:
            removed = await rows(_PRUNE_RECEIPTS)
            return removed, PruneCounts(webhook_receipts=removed)

        async def jobs() -> tuple[int, PruneCounts]:
            try:
                return await jobs_batch()
            except _HookFailed as failed:
                raise failed.error from None

        async def jobs_batch() -> tuple[int, PruneCounts]:
            async with self._connection() as conn, conn.transaction():
                # SKIP LOCKED: a prune running in another replica takes other jobs instead of waiting.
                found = await conn.fetch(
                    f"SELECT id FROM jobs WHERE {_FINISHED_BEFORE} LIMIT $2 FOR UPDATE SKIP LOCKED", before, batch_size
                )
                ids = [row[0] for row in found]
                if not ids:
                    return 0, PruneCounts()
                if before_jobs_pruned is not None:  # the rows stay locked (SKIP LOCKED keeps other prunes off them)
                    try:
                        await before_jobs_pruned(ids)
                    except Exception as exc:  # the hook's own error, not the database's: past the translation
                        raise _HookFailed(exc) from exc
                events = _row_count(await conn.execute("DELETE FROM events WHERE job_id = ANY($1::text[])", ids))
                of_jobs = "job_id = ANY($1::text[])"
                await conn.execute(_DELETE_ATTEMPTS.format(where=of_jobs), ids)
                deliveries = _row_count(await conn.execute(f"DELETE FROM webhook_deliveries WHERE {of_jobs}", ids))
                removed = _row_count(await conn.execute("DELETE FROM jobs WHERE id = ANY($1::text[])", ids))
                return removed, PruneCounts(jobs=removed, events=events, deliveries=deliveries)

        async def tests() -> tuple[int, PruneCounts]:
            async with self._connection() as conn, conn.transaction():
                found = await conn.fetch(
                    f"SELECT id FROM webhook_deliveries WHERE {_TESTS_BEFORE} ORDER BY created_at LIMIT $2 "
                    "FOR UPDATE SKIP LOCKED",
                    before,
                    batch_size,
                )
                ids = [row[0] for row in found]
                await conn.execute(_DELETE_ATTEMPTS.format(where="id = ANY($1::text[])"), ids)
                removed = _row_count(
                    await conn.execute("DELETE FROM webhook_deliveries WHERE id = ANY($1::text[])", ids)
                )
                # Events of a key alone (budget.threshold) go by their age, with the deliveries they made.
                events = _row_count(await conn.execute(_PRUNE_KEY_EVENTS, before, batch_size))
                return max(removed, events), PruneCounts(deliveries=removed, events=events)

        return await prune_in_batches(
            batch_size, self.prune_pause, keys=keys, receipts=receipts, jobs=jobs, tests=tests
        )

    async def jobs_with_assets(
        self, completed_before: str, *, after: tuple[str, str] = ("", ""), limit: int
    ) -> list[tuple[str, str]]:
        rows = await self._fetch(
            f"SELECT completed_at, id FROM jobs WHERE {_WITH_ASSETS_BEFORE} ORDER BY completed_at, id LIMIT $4",
            completed_before,
            *after,
            limit,
        )
        return [(row[0], row[1]) for row in rows]
