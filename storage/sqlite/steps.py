"""SQLite's SQL for each step of the shared job writes, run on the writer's thread inside its transaction."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import aiosqlite

from storage import archives, webhooks
from storage.base import Clock, JobEncoder
from storage.budgets import Limits
from storage.errors import TaskTaken
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

T = TypeVar("T")

_SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
_INSERT_JOB = (
    f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * len(JOB_FIXED_COLUMNS + JOB_MUTABLE_COLUMNS))})"
)
_UPDATE_JOB = "UPDATE jobs SET " + ", ".join(f"{c} = ?" for c in JOB_MUTABLE_COLUMNS) + " WHERE id = ?"
_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=256)
def sqlite_dialect(sql: str) -> str:
    """Shared SQL (storage.webhooks) as SQLite takes it: `$n` placeholders become `?n`."""
    return _PLACEHOLDER.sub(r"?\1", sql)


_ENABLED_ENDPOINTS = sqlite_dialect(webhooks.ENABLED_ENDPOINTS)
_LOCK_BUDGET = sqlite_dialect(LOCK_BUDGET)
_SAVE_BUDGET = sqlite_dialect(SAVE_BUDGET)


def run_to_end(write: Coroutine[Any, Any, T]) -> T:
    """Run a shared write whose steps are all SQLite's: they never suspend, so it ends in one step, no loop."""
    try:
        write.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    write.close()
    raise RuntimeError("a SQLite write step suspended")


class SqliteSteps:
    """The steps of `storage.writes` on the writer's sqlite3 connection, which a transaction holds open.

    The methods are coroutines only to share one write logic with PostgreSQL: none of them awaits anything.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        logged: list[EventRecord],
        encode_job: JobEncoder,
        clock: Clock,
        first_delivery_delay: float,
        archive: bool = False,
    ) -> None:
        self._db = db
        self.logged = logged
        self.encode_job = encode_job
        self.clock = clock
        self.first_delivery_delay = first_delivery_delay
        self.archive = archive

    async def select_job(self, job_id: str, *, for_update: bool = False) -> JobRecord | None:
        # No row lock needed: the writer's transaction excludes every other writer.
        row = self._db.execute(_SELECT_JOB, (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    async def insert_job(self, job: JobRecord, inline: Mapping[str, str] | None) -> None:
        self._db.execute(_INSERT_JOB, [*fixed_values(job), *mutable_values(job)])
        if inline:
            self._db.execute("INSERT INTO job_inline (job_id, data_uris) VALUES (?, ?)", (job.id, json_text(inline)))

    async def save_job(self, job: JobRecord) -> None:
        try:
            self._db.execute(_UPDATE_JOB, [*mutable_values(job), job.id])
        except sqlite3.IntegrityError:
            owner = self._task_owner(job)
            if owner is None or job.provider_task_id is None:
                raise
            raise TaskTaken(job.provider, job.provider_task_id, owner) from None

    async def insert_event(
        self, job_id: str, api_key_id: str, created_at: str, event_type: str, snapshot: bytes, detail: bytes | None
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO events (job_id, api_key_id, type, created_at, job, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, api_key_id, event_type, created_at, snapshot, detail),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def insert_key(self, job: JobRecord, claim: IdempotencyClaim) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO idempotency_keys (api_key_id, key, request_hash, job_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (job.api_key_id, claim.key, claim.request_hash, job.id, job.created_at),
        )
        return cursor.rowcount == 1

    async def held_key(self, api_key_id: str, key: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT request_hash, job_id FROM idempotency_keys WHERE api_key_id = ? AND key = ?", (api_key_id, key)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    async def reassign_key(self, job: JobRecord, claim: IdempotencyClaim) -> None:
        self._db.execute(
            "UPDATE idempotency_keys SET request_hash = ?, job_id = ?, created_at = ? WHERE api_key_id = ? AND key = ?",
            (claim.request_hash, job.id, job.created_at, job.api_key_id, claim.key),
        )

    async def record_receipt(self, receipt: Receipt, received_at: str) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO webhook_receipts (provider, receipt_key, received_at) VALUES (?, ?, ?)",
            (receipt.provider, receipt.key, received_at),
        )
        return cursor.rowcount == 1

    async def forget_receipt(self, receipt: Receipt) -> None:
        self._db.execute(
            "DELETE FROM webhook_receipts WHERE provider = ? AND receipt_key = ?", (receipt.provider, receipt.key)
        )

    async def enabled_endpoints(self, api_key_id: str) -> list[Any]:
        return self._db.execute(_ENABLED_ENDPOINTS, (api_key_id,)).fetchall()

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        await webhooks.insert_deliveries(SqliteSql(self._db), deliveries)

    async def lock_budget(self, api_key_id: str, period: str) -> tuple[BudgetTotals, Limits]:
        # No row lock needed: the writer's transaction excludes every other writer.
        self._db.execute(
            "INSERT OR IGNORE INTO budget_periods (api_key_id, period) VALUES (?, ?)", (api_key_id, period)
        )
        row = self._db.execute(_LOCK_BUDGET, (api_key_id, period)).fetchone()
        return budget_from_row(row, api_key_id, period), budget_limits(row[6], row[7])

    async def save_budget(self, totals: BudgetTotals) -> None:
        self._db.execute(_SAVE_BUDGET, budget_values(totals, str))

    async def insert_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        await archives.insert_archive(SqliteSql(self._db), job_id, items, self.clock())

    async def close_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        await archives.close_archive(SqliteSql(self._db), job_id, items)

    def _task_owner(self, job: JobRecord) -> str | None:
        """The other job that holds the provider task id `job` names, if any."""
        row = self._db.execute(
            "SELECT id FROM jobs WHERE provider = ? AND provider_task_id = ? AND id != ?",
            (job.provider, job.provider_task_id, job.id),
        ).fetchone()
        return None if row is None else str(row[0])


class _IdLists:
    """Lists of ids travel as one JSON text, read back with json_each."""

    def among(self, placeholder: str, *, negate: bool = False) -> str:
        return f"{'NOT ' if negate else ''}IN (SELECT value FROM json_each({placeholder}))"

    def ids(self, values: Iterable[str]) -> Any:
        return json_text(list(values))


class SqliteReader(_IdLists):
    """`storage.webhooks.Reader` on the store's reading connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        return list(await self._conn.execute_fetchall(sqlite_dialect(sql), params))


class SqliteSql(_IdLists):
    """`storage.webhooks.Sql` on the writer's sqlite3 connection, inside its transaction, on its thread: like
    the write steps, its coroutines never suspend."""

    lock = ""  # the writer's transaction excludes every other writer
    lease_owner: str | None = None

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        return self._db.execute(sqlite_dialect(sql), params).fetchall()

    async def execute(self, sql: str, *params: Any) -> int:
        return self._db.execute(sqlite_dialect(sql), params).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._db.executemany(sqlite_dialect(sql), rows)
