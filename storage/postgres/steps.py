"""PostgreSQL's SQL for each step of the shared job writes, on a pooled connection inside its transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from storage import archives, webhooks
from storage.base import Clock, JobEncoder
from storage.budgets import Limits
from storage.errors import TaskTaken
from storage.postgres.feed import insert_event, lock_events
from storage.records import (
    JOB_FIXED_COLUMNS,
    JOB_MUTABLE_COLUMNS,
    BudgetTotals,
    DeliveryRecord,
    EventRecord,
    IdempotencyClaim,
    JobRecord,
    Receipt,
)
from storage.rows import (
    JOB_COLUMNS,
    LOCK_BUDGET,
    SAVE_BUDGET,
    budget_from_row,
    budget_limits,
    budget_values,
    fixed_values,
    job_from_row,
    json_text,
    mutable_values,
)

_SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
_COLUMN_COUNT = len(JOB_FIXED_COLUMNS + JOB_MUTABLE_COLUMNS)
_INSERT_JOB = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join(f'${n}' for n in range(1, _COLUMN_COUNT + 1))})"
_LEASE_UNTIL = f"${JOB_MUTABLE_COLUMNS.index('lease_until') + 1}"
# The key's enabled endpoints, read in the round trip that takes the event lock: a LEFT JOIN on the lock's one
# row, so the lock is taken when there are none (a row of NULLs then).
_LOCK_AND_ENDPOINTS = (
    "SELECT e.id, e.url, e.events FROM (SELECT pg_advisory_xact_lock($1)) AS l "
    "LEFT JOIN webhook_endpoints e ON e.api_key_id = $2 AND NOT e.disabled"
)
_UPDATE_JOB = (
    "UPDATE jobs SET "
    + ", ".join(f"{column} = ${n}" for n, column in enumerate(JOB_MUTABLE_COLUMNS, 1))
    # A lease given back names no holder any more: who holds a job stays readable in the table.
    + f", lease_owner = CASE WHEN {_LEASE_UNTIL}::float8 IS NULL THEN NULL ELSE lease_owner END"
    + f" WHERE id = ${len(JOB_MUTABLE_COLUMNS) + 1}"
)


class PostgresSteps:
    """The steps of `storage.writes` on one connection, inside the transaction open on it."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        logged: list[EventRecord],
        encode_job: JobEncoder,
        clock: Clock,
        first_delivery_delay: float,
        archive: bool = False,
    ) -> None:
        self._conn = conn
        self.logged = logged
        self.encode_job = encode_job
        self.clock = clock
        self.first_delivery_delay = first_delivery_delay
        self.archive = archive
        self._events_locked = False

    async def select_job(self, job_id: str, *, for_update: bool = False) -> JobRecord | None:
        row = await self._conn.fetchrow(_SELECT_JOB + " FOR UPDATE" if for_update else _SELECT_JOB, job_id)
        return None if row is None else job_from_row(row)

    async def insert_job(self, job: JobRecord, inline: Mapping[str, str] | None) -> None:
        await self._conn.execute(_INSERT_JOB, *fixed_values(job), *mutable_values(job))
        if inline:
            await self._conn.execute(
                "INSERT INTO job_inline (job_id, data_uris) VALUES ($1, $2)", job.id, json_text(inline)
            )

    async def save_job(self, job: JobRecord) -> None:
        try:
            await self._conn.execute(_UPDATE_JOB, *mutable_values(job), job.id)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "jobs_by_provider_task" or job.provider_task_id is None:
                raise
            # The failed statement aborted the transaction: the store reads the task's holder after the rollback.
            raise TaskTaken(job.provider, job.provider_task_id, None) from None

    async def insert_event(
        self, job_id: str, api_key_id: str, created_at: str, event_type: str, snapshot: bytes, detail: bytes | None
    ) -> int:
        return await insert_event(
            self._conn, job_id, api_key_id, created_at, event_type, snapshot, detail, locked=self._events_locked
        )

    async def insert_key(self, job: JobRecord, claim: IdempotencyClaim) -> bool:
        inserted = await self._conn.fetchval(
            "INSERT INTO idempotency_keys (api_key_id, key, request_hash, job_id, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (api_key_id, key) DO NOTHING RETURNING true",
            job.api_key_id,
            claim.key,
            claim.request_hash,
            job.id,
            job.created_at,
        )
        return bool(inserted)

    async def held_key(self, api_key_id: str, key: str) -> tuple[str, str] | None:
        row = await self._conn.fetchrow(
            "SELECT request_hash, job_id FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 FOR UPDATE",
            api_key_id,
            key,
        )
        return None if row is None else (row["request_hash"], row["job_id"])

    async def reassign_key(self, job: JobRecord, claim: IdempotencyClaim) -> None:
        await self._conn.execute(
            "UPDATE idempotency_keys SET request_hash = $3, job_id = $4, created_at = $5 "
            "WHERE api_key_id = $1 AND key = $2",
            job.api_key_id,
            claim.key,
            claim.request_hash,
            job.id,
            job.created_at,
        )

    async def record_receipt(self, receipt: Receipt, received_at: str) -> bool:
        recorded = await self._conn.fetchval(
            "INSERT INTO webhook_receipts (provider, receipt_key, received_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING true",
            receipt.provider,
            receipt.key,
            received_at,
        )
        return bool(recorded)

    async def forget_receipt(self, receipt: Receipt) -> None:
        await self._conn.execute(
            "DELETE FROM webhook_receipts WHERE provider = $1 AND receipt_key = $2", receipt.provider, receipt.key
        )

    async def enabled_endpoints(self, api_key_id: str) -> list[Any]:
        # Called right before insert_event: taking its lock here spares the event's write a round trip.
        rows = await lock_events(self._conn, _LOCK_AND_ENDPOINTS, api_key_id)
        self._events_locked = True
        return [row for row in rows if row[0] is not None]

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        await self._conn.executemany(webhooks.INSERT_DELIVERY, [webhooks.delivery_values(d) for d in deliveries])

    async def lock_budget(self, api_key_id: str, period: str) -> tuple[BudgetTotals, Limits]:
        # Every create and settlement of the key in this period waits here, in any replica, until this one commits.
        await self._conn.execute(
            "INSERT INTO budget_periods (api_key_id, period) VALUES ($1, $2) ON CONFLICT DO NOTHING", api_key_id, period
        )
        row = await self._conn.fetchrow(LOCK_BUDGET + " FOR UPDATE OF b", api_key_id, period)
        return budget_from_row(row, api_key_id, period), budget_limits(row[6], row[7])

    async def save_budget(self, totals: BudgetTotals) -> None:
        await self._conn.execute(SAVE_BUDGET, *budget_values(totals, lambda value: value))

    async def insert_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        await archives.insert_archive(PostgresSql(self._conn, None), job_id, items, self.clock())

    async def close_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        await archives.close_archive(PostgresSql(self._conn, None), job_id, items)


class PostgresSql:
    """`storage.webhooks.Sql` on one pooled connection (inside a transaction when the operation writes)."""

    lock = " FOR UPDATE"

    def __init__(self, conn: asyncpg.Connection, lease_owner: str | None) -> None:
        self._conn = conn
        self.lease_owner: str | None = lease_owner

    async def fetch(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        rows: list[Any] = await self._conn.fetch(sql, *params)
        return rows

    async def execute(self, sql: str, *params: Any) -> int:
        status: str = await self._conn.execute(sql, *params)
        return int(status.rsplit(" ", 1)[-1])  # "UPDATE 3", "INSERT 0 1"

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._conn.executemany(sql, rows)

    def among(self, placeholder: str, *, negate: bool = False) -> str:
        return f"<> ALL({placeholder}::text[])" if negate else f"= ANY({placeholder}::text[])"

    def ids(self, values: Iterable[str]) -> Any:
        return list(values)
