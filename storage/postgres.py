"""PostgreSQL backend of the storage contract, on asyncpg, for one or several replicas sharing one database.

Reads and writes go through a connection pool. One LISTEN connection per process hands every committed event,
whichever replica wrote it, to this process's listeners in id order, each event once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from storage import migrations
from storage.base import Decide, EventListener, JobEncoder, prune_in_batches
from storage.errors import IdempotencyConflict, QueryRejected, SchemaOutdated, StorageUnavailable, TaskTaken
from storage.records import (
    COST_FIELDS,
    ApiKeyRecord,
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

CHANNEL = "reelay_events"
"""The NOTIFY channel; a notification's payload is the newest event id of the transaction that sent it."""

# Transaction-level advisory lock keys ("REELAY" and a number). Every writer takes _EVENT_LOCK before it
# draws an event id and holds it until it commits, so event ids are committed in increasing order.
_EVENT_LOCK = 0x5245454C41590001
_MIGRATION_LOCK = 0x5245454C41590002

_SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
_INSERT_JOB = (
    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join(f'${n}' for n in range(1, len(_FIXED + _MUTABLE) + 1))})"
)
_UPDATE_JOB = (
    "UPDATE jobs SET "
    + ", ".join(f"{column} = ${n}" for n, column in enumerate(_MUTABLE, 1))
    # A lease given back names no holder any more: who holds a job stays readable in the table.
    + f", lease_owner = CASE WHEN ${_MUTABLE.index('lease_until') + 1}::float8 IS NULL THEN NULL ELSE lease_owner END"
    + f" WHERE id = ${len(_MUTABLE) + 1}"
)
# One round trip while the event lock is held: insert, then NOTIFY the new id (delivered at commit).
_INSERT_EVENT = (
    "WITH e AS (INSERT INTO events (job_id, api_key_id, type, created_at, job) VALUES ($1, $2, $3, $4, $5) "
    f"RETURNING id) SELECT id, pg_notify('{CHANNEL}', id::text) FROM e"
)
# xmin names the transaction that inserted a row (events are never updated): it groups events by commit.
_EVENTS_BETWEEN = f"SELECT xmin::text, {EVENT_COLUMNS} FROM events WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3"
_NO_UPPER_BOUND = 2**63 - 1
_FEED_BATCH = 500

_LEASABLE = "(lease_until IS NULL OR lease_until <= $1)"
# Literals match the partial indexes jobs_to_dispatch and jobs_to_poll, so the planner can use them.
_DUE_DISPATCH = (
    f"dispatch_state IN ('{DispatchState.PENDING}', '{DispatchState.SENDING}') "
    f"AND next_attempt_at <= $1 AND {_LEASABLE}"
)
_DUE_POLL = f"stage IN ({int(Stage.SUBMITTED)}, {int(Stage.PROCESSING)}) AND next_poll_at <= $1 AND {_LEASABLE}"
_CLAIM = (
    "UPDATE jobs SET lease_until = $2, lease_owner = $3 WHERE id IN "
    "(SELECT id FROM jobs WHERE {due} ORDER BY {order}, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
    f"RETURNING {JOB_COLUMNS}"
)
_CLAIM_DISPATCH = _CLAIM.format(due=_DUE_DISPATCH, order="next_attempt_at")
_CLAIM_POLLS = _CLAIM.format(due=_DUE_POLL, order="next_poll_at")


# Per cost figure: its exact sum (numeric, never float8) and how many jobs have it. Only numbers are summed: one
# odd value must not make the whole report fail.
_COST_SUMS = ", ".join(
    f"sum(CASE WHEN jsonb_typeof(cost -> '{field}') = 'number' THEN (cost ->> '{field}')::numeric END), "
    f"count(CASE WHEN jsonb_typeof(cost -> '{field}') = 'number' THEN 1 END)"
    for field in COST_FIELDS
)
# Literal `stage = 3` so the planner can use the partial index jobs_by_completion.
_FINISHED_BEFORE = f"stage = {int(Stage.TERMINAL)} AND completed_at < $1"
_PRUNE_KEYS = (
    "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN "
    "(SELECT api_key_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)
_PRUNE_RECEIPTS = (
    "DELETE FROM webhook_receipts WHERE (provider, receipt_key) IN "
    "(SELECT provider, receipt_key FROM webhook_receipts WHERE received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


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


class PostgresStore:
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
        min_connections: int = 1,
        max_connections: int = 10,
        timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._encode_job = encode_job
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._feed: _EventFeed | None = None
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
            with _translated():
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
                feed = _EventFeed(
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
                        now_iso(),
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
            with _translated():
                async with pool.acquire(timeout=self._timeout) as conn:
                    yield conn
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[asyncpg.Connection, list[EventRecord]]]:
        """A transaction; events appended in it are announced once it commits, before the caller goes on."""
        events: list[EventRecord] = []
        async with self._connection() as conn:
            async with conn.transaction():
                yield conn, events
            if events and self._feed is not None:
                await self._feed.committed(conn, events)

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *params)
            return rows

    async def _append_event(
        self, conn: asyncpg.Connection, job: JobRecord, event_type: str, events: list[EventRecord]
    ) -> EventRecord:
        snapshot = self._encode_job(job)  # before the lock: every writer waits while it is held
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _EVENT_LOCK)
        event_id = await conn.fetchval(_INSERT_EVENT, job.id, job.api_key_id, event_type, job.updated_at, snapshot)
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
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO api_keys (id, name, secret_hash, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
                key.id,
                key.name,
                key.secret_hash,
                key.created_at,
                key.revoked_at,
            )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        rows = await self._fetch(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1", key_id
        )
        return next((ApiKeyRecord(**dict(row.items())) for row in rows), None)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        )
        return [ApiKeyRecord(**dict(row.items())) for row in rows]

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
        async with self._write() as (conn, events):
            if idempotency is not None:
                existing = await self._claim_idempotency_key(conn, job, idempotency)
                if existing is not None:
                    return CreateOutcome(job=existing, created=False)
            await conn.execute(_INSERT_JOB, *fixed_values(job), *mutable_values(job))
            if inline:
                await conn.execute(
                    "INSERT INTO job_inline (job_id, data_uris) VALUES ($1, $2)", job.id, json_text(inline)
                )
            event = await self._append_event(conn, job, event_type, events)
        return CreateOutcome(job=job, created=True, event=event)

    async def _claim_idempotency_key(
        self, conn: asyncpg.Connection, job: JobRecord, idempotency: IdempotencyClaim
    ) -> JobRecord | None:
        """Record the key for `job`, or return the job it already made; None means go on and create `job`."""
        while True:
            # A concurrent create with the same key makes this insert wait for its outcome: one of them wins.
            inserted = await conn.fetchval(
                "INSERT INTO idempotency_keys (api_key_id, key, request_hash, job_id, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (api_key_id, key) DO NOTHING RETURNING true",
                job.api_key_id,
                idempotency.key,
                idempotency.request_hash,
                job.id,
                job.created_at,
            )
            if inserted:
                return None
            row = await conn.fetchrow(
                "SELECT request_hash, job_id FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 FOR UPDATE",
                job.api_key_id,
                idempotency.key,
            )
            if row is None:
                continue  # pruned between the two statements: claim it afresh
            existing = await self._get_job(conn, row["job_id"])
            if existing is None:  # its job was pruned: the key expired with it
                await conn.execute(
                    "UPDATE idempotency_keys SET request_hash = $3, job_id = $4, created_at = $5 "
                    "WHERE api_key_id = $1 AND key = $2",
                    job.api_key_id,
                    idempotency.key,
                    idempotency.request_hash,
                    job.id,
                    job.created_at,
                )
                return None
            if row["request_hash"] != idempotency.request_hash:
                raise IdempotencyConflict(row["job_id"])
            return existing

    @staticmethod
    async def _get_job(conn: asyncpg.Connection, job_id: str, *, for_update: bool = False) -> JobRecord | None:
        row = await conn.fetchrow(_SELECT_JOB + " FOR UPDATE" if for_update else _SELECT_JOB, job_id)
        return None if row is None else job_from_row(row)

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._connection() as conn:
            return await self._get_job(conn, job_id)

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
        params = _Params(api_key_id)
        clauses = ["api_key_id = $1"]
        for column, value in (
            ("status", filters.status),
            ("model", filters.model),
            ("provider", filters.provider),
        ):
            if value is not None:
                clauses.append(f"{column} = {params.bind(value)}")
        if filters.metadata:
            # Containment compares decoded keys and values: keys are taken literally, never as paths.
            clauses.append(f"metadata @> {params.bind(json_text(filters.metadata))}::jsonb")
        if before_id is not None:
            clauses.append(f"id < {params.bind(before_id)}")
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT {params.bind(limit)}",
            *params.values,
        )
        return [job_from_row(row) for row in rows]

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        job: JobRecord | None = None
        try:
            async with self._write() as (conn, events):
                # The row lock makes read-decide-write atomic against every other writer, in any process.
                current = await self._get_job(conn, job_id, for_update=True)
                if current is None:
                    raise KeyError(job_id)
                if receipt is not None:
                    recorded = await conn.fetchval(
                        "INSERT INTO webhook_receipts (provider, receipt_key, received_at) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING RETURNING true",
                        receipt.provider,
                        receipt.key,
                        now_iso(),
                    )
                    if not recorded:
                        return UpdateOutcome(job=current, duplicate=True)
                decision = decide(current)
                if decision is None:
                    return UpdateOutcome(job=current)
                job, event_type = decision
                await conn.execute(_UPDATE_JOB, *mutable_values(job), job_id)
                event = None if event_type is None else await self._append_event(conn, job, event_type, events)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "jobs_by_provider_task" or job is None or job.provider_task_id is None:
                raise
            # The failed statement aborted the transaction: the task's holder is read after its rollback.
            owner = await self.find_job_by_task(job.provider, job.provider_task_id)
            raise TaskTaken(job.provider, job.provider_task_id, None if owner is None else owner.id) from None
        return UpdateOutcome(job=job, event=event, changed=True)

    # -- outbox and polling ------------------------------------------------------------------

    async def _claim(self, sql: str, order: str, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        # One statement: rows another worker is claiming right now are skipped, never waited for nor taken twice.
        rows = await self._fetch(sql, now, now + lease_seconds, self.lease_owner, limit)
        jobs = [job_from_row(row) for row in rows]
        return sorted(jobs, key=lambda job: (getattr(job, order), job.id))  # RETURNING keeps no order

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(_CLAIM_DISPATCH, "next_attempt_at", now, limit, lease_seconds)

    async def claim_polls(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        return await self._claim(_CLAIM_POLLS, "next_poll_at", now, limit, lease_seconds)

    async def release_leases(self) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE jobs SET lease_until = NULL, lease_owner = NULL "
                "WHERE lease_owner = $1 AND lease_until IS NOT NULL",
                self.lease_owner,
            )
        return _row_count(status)

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
            f"(SELECT count(*) FROM events WHERE job_id IN (SELECT id FROM jobs WHERE {_FINISHED_BEFORE})), "
            "(SELECT count(*) FROM webhook_receipts WHERE received_at < $1), "
            "(SELECT count(*) FROM idempotency_keys WHERE created_at < $1)",
            before,
        )
        jobs, events, receipts, keys = rows[0]
        return PruneCounts(jobs=jobs, events=events, webhook_receipts=receipts, idempotency_keys=keys)

    async def prune(self, before: str, *, batch_size: int = 500) -> PruneCounts:
        async def rows(sql: str) -> tuple[int, int]:
            async with self._connection() as conn:
                return _row_count(await conn.execute(sql, before, batch_size)), 0

        async def jobs() -> tuple[int, int]:
            async with self._connection() as conn, conn.transaction():
                # SKIP LOCKED: a prune running in another replica takes other jobs instead of waiting.
                found = await conn.fetch(
                    f"SELECT id FROM jobs WHERE {_FINISHED_BEFORE} LIMIT $2 FOR UPDATE SKIP LOCKED", before, batch_size
                )
                ids = [row[0] for row in found]
                if not ids:
                    return 0, 0
                events = _row_count(await conn.execute("DELETE FROM events WHERE job_id = ANY($1::text[])", ids))
                return _row_count(await conn.execute("DELETE FROM jobs WHERE id = ANY($1::text[])", ids)), events

        return await prune_in_batches(
            batch_size,
            self.prune_pause,
            keys=lambda: rows(_PRUNE_KEYS),
            receipts=lambda: rows(_PRUNE_RECEIPTS),
            jobs=jobs,
        )


class _EventFeed:
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


class _translated:
    """Turns asyncpg driver errors and network errors into StorageUnavailable at the edge, and what the
    request itself made PostgreSQL refuse into QueryRejected."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            return  # a programming error or a constraint the caller handles; let it through
        # Class 22 (a value it cannot take: NUL in text, a bad escape; also asyncpg's own argument checks) and
        # class 54 (statement too complex) are about the request, not the server.
        if isinstance(exc, asyncpg.DataError | asyncpg.ProgramLimitExceededError) or (
            isinstance(exc, asyncpg.InterfaceError) and "number of query arguments" in str(exc)
        ):
            raise QueryRejected(f"postgresql: {exc}") from exc
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            raise StorageUnavailable(f"postgresql: {exc}") from exc
        if isinstance(exc, OSError | TimeoutError):
            raise StorageUnavailable(f"postgresql: {exc or type(exc).__name__}") from exc
