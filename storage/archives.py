"""The archiver's queue (table asset_archives): one row per succeeded job whose outputs are copied into the asset
store, in SQL both backends share (on a `storage.webhooks.Sql`).

A row is written by the job's succeeded write itself (`storage.writes.update_job`, when the store was made with
`archive=True`), leased by one worker at a time, saved after each round of copies, and closed in the transaction
that adds the job's `output.assets`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import msgspec

from storage.webhooks import Sql

PENDING = "pending"
DONE = "done"

_T = TypeVar("_T")
_COLUMNS = "job_id, items, attempts, succeeded_at, next_attempt_at, lease_until"


class ArchiveRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job's copies: `items` as `asset_items` made them, each with its result once final."""

    job_id: str
    items: list[dict[str, Any]]
    attempts: int
    succeeded_at: float  # unix time: the copy deadline counts from it
    next_attempt_at: float
    lease_until: float | None = None


def asset_items(output: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What a succeeded job's output has to copy: `videos[i].url` ("video", i), `videos[i].thumbnail_url`
    ("thumbnail", i), `last_frame_url` ("last_frame", 0); null URLs are skipped."""
    if not output:
        return []
    items: list[dict[str, Any]] = []
    videos = output.get("videos") or []
    for variant, field in (("video", "url"), ("thumbnail", "thumbnail_url")):
        for index, video in enumerate(videos):
            url = video.get(field) if isinstance(video, dict) else None
            if isinstance(url, str) and url:
                items.append({"variant": variant, "index": index, "url": url})
    last = output.get("last_frame_url")
    if isinstance(last, str) and last:
        items.append({"variant": "last_frame", "index": 0, "url": last})
    return items


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[dict[str, Any]]).decode


def _record(row: Any) -> ArchiveRecord:
    return ArchiveRecord(
        job_id=row[0],
        items=_decode(row[1]),
        attempts=row[2],
        succeeded_at=row[3],
        next_attempt_at=row[4],
        lease_until=row[5],
    )


async def insert_archive(db: Sql, job_id: str, items: list[dict[str, Any]], now: float) -> None:
    await db.execute(
        "INSERT INTO asset_archives (job_id, items, succeeded_at, next_attempt_at) VALUES ($1, $2, $3, $3) "
        "ON CONFLICT (job_id) DO NOTHING",
        job_id,
        _encode(items).decode(),
        now,
    )


async def claim_archives(db: Sql, now: float, limit: int, lease_seconds: float) -> list[ArchiveRecord]:
    # SKIP LOCKED where several workers share the database: a row another is claiming is passed over.
    skip = " FOR UPDATE SKIP LOCKED" if db.lock else ""
    rows = await db.fetch(
        f"UPDATE asset_archives SET lease_until = $2, lease_owner = $3 WHERE job_id IN "
        f"(SELECT job_id FROM asset_archives WHERE state = '{PENDING}' AND next_attempt_at <= $1 "
        f"AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at LIMIT $4{skip}) "
        f"RETURNING {_COLUMNS}",
        now,
        now + lease_seconds,
        db.lease_owner,
        limit,
    )
    return sorted((_record(row) for row in rows), key=lambda record: record.next_attempt_at)


async def renew_archive(db: Sql, job_id: str, until: float) -> None:
    await db.execute(
        f"UPDATE asset_archives SET lease_until = $2 WHERE job_id = $1 AND state = '{PENDING}'", job_id, until
    )


async def save_archive(db: Sql, job_id: str, items: list[dict[str, Any]], next_attempt_at: float) -> None:
    """Keep the copies made so far, count the attempt, and give the row back until `next_attempt_at`."""
    await db.execute(
        "UPDATE asset_archives SET items = $2, attempts = attempts + 1, next_attempt_at = $3, lease_until = NULL, "
        f"lease_owner = NULL WHERE job_id = $1 AND state = '{PENDING}'",
        job_id,
        _encode(items).decode(),
        next_attempt_at,
    )


async def close_archive(db: Sql, job_id: str, items: list[dict[str, Any]]) -> None:
    await db.execute(
        f"UPDATE asset_archives SET state = '{DONE}', items = $2, lease_until = NULL, lease_owner = NULL "
        "WHERE job_id = $1",
        job_id,
        _encode(items).decode(),
    )


def release_sql(owner_placeholder: str | None) -> str:
    """Drops the archive leases (of the owner bound at the placeholder, where leases name one)."""
    mine = "" if owner_placeholder is None else f" AND lease_owner = {owner_placeholder}"
    return f"UPDATE asset_archives SET lease_until = NULL, lease_owner = NULL WHERE lease_until IS NOT NULL{mine}"


class ArchiveMethods:
    """The Store's archive queue methods, the same on both backends (see `storage.webhooks.WebhookMethods`)."""

    async def _hook(self, operation: Callable[[Sql], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    async def claim_archives(self, now: float, limit: int, lease_seconds: float) -> list[ArchiveRecord]:
        return await self._hook(lambda db: claim_archives(db, now, limit, lease_seconds))

    async def renew_archive(self, job_id: str, until: float) -> None:
        await self._hook(lambda db: renew_archive(db, job_id, until))

    async def save_archive(self, job_id: str, items: list[dict[str, Any]], next_attempt_at: float) -> None:
        await self._hook(lambda db: save_archive(db, job_id, items, next_attempt_at))
