"""The storage contract: domain-level async operations that every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from storage.records import (
    ApiKeyRecord,
    BackupReport,
    CreateOutcome,
    Declined,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PruneCounts,
    Receipt,
    UpdateOutcome,
    UsageRow,
)

JobEncoder = Callable[[JobRecord], bytes]
"""Turns a job into the JSON snapshot stored with each event (the service decides the shape)."""

EventListener = Callable[[Sequence[EventRecord]], None]
"""Called with newly committed events, in commit order."""

Decision = tuple[JobRecord, str | None] | Declined | None
"""What a decide function returns: the job's new state and the event type to log (None logs none); None when
there is nothing to change; or Declined, when the job must be left as it is for a reason the caller reads back."""

Decide = Callable[[JobRecord], Decision]

Clock = Callable[[], float]
"""The time now in seconds since the epoch, injected by whoever builds the store (time.time at the edge)."""

BackupProgress = Callable[[int, int], None]
"""Called on the event loop with (pages copied, total pages) as a database copy advances."""


class Store(Protocol):
    """Durable home of keys, jobs, the event log, webhook receipts and idempotency keys."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None:
        """Release connections; pending writes are finished first."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations and return the names of those applied."""

    async def check(self) -> None:
        """Raise StorageUnavailable or SchemaOutdated unless the store is ready to serve."""

    def add_listener(self, listener: EventListener) -> None:
        """Register a callback for committed events, called in event-id order.

        On a database that several processes share, it gets the events every one of them commits.
        """

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key (its secret only as a hash)."""

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """One API key, revoked or not."""

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every API key, oldest first."""

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        """Revoke a key; False if it does not exist or was already revoked."""

    async def create_job(
        self,
        job: JobRecord,
        event_type: str,
        *,
        idempotency: IdempotencyClaim | None = None,
        inline: Mapping[str, str] | None = None,
    ) -> CreateOutcome:
        """Insert a job and its first event, or return the job an idempotency key already made.

        `inline` is the job's inline data (by the names its input uses for it), stored once apart from the job:
        no job read, list or event carries it; only `inline_data` reads it back.
        Raises IdempotencyConflict when the key was used with a different request.
        """

    async def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id."""

    async def inline_data(self, job_id: str) -> dict[str, str]:
        """The inline data stored with a job's creation; empty if none (or no such job)."""

    async def find_job_by_task(self, provider: str, provider_task_id: str) -> JobRecord | None:
        """The job a provider's task id belongs to."""

    async def list_jobs(
        self, api_key_id: str, filters: JobFilter, *, limit: int, before_id: str | None = None
    ) -> list[JobRecord]:
        """A key's jobs, newest first, starting strictly before `before_id`."""

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        """Atomically read a job, let `decide` compute its next state, write it and log its event.

        With a receipt, a webhook already recorded is reported as duplicate and nothing changes;
        otherwise the receipt is recorded in the same transaction, unless `decide` declines. The store stamps
        the receipt with its clock. Raises JobNotFound when there is no such job, and TaskTaken, writing
        nothing, when the new state names a provider task id that another job holds.
        """

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        """Lease jobs whose upstream create is due."""

    async def claim_polls(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        """Lease submitted, unfinished jobs whose status check is due."""

    async def release_leases(self) -> int:
        """Drop the leases this store holds, so they can be claimed again at once; return how many.

        A single-process store (SQLite) holds every lease and drops them all. A store shared by several
        processes (PostgreSQL) drops only those this instance claimed: other workers' leases stay until they
        end or expire.
        """

    async def events_after(
        self,
        after_id: int,
        *,
        api_key_id: str | None = None,
        job_id: str | None = None,
        limit: int = 500,
        max_bytes: int | None = None,
    ) -> list[EventRecord]:
        """Logged events with id greater than `after_id`, oldest first.

        With `max_bytes`, no more events than fit in that many bytes of job snapshots, but at least one.
        """

    async def last_event_id(self) -> int:
        """The id of the newest event, or 0."""

    async def usage(self, api_key_id: str, start: str | None, end: str | None) -> list[UsageRow]:
        """The key's jobs created in [start, end), grouped by day, model and status."""

    async def prunable(self, before: str) -> PruneCounts:
        """What `prune(before)` would remove now; removes nothing."""

    async def prune(self, before: str, *, batch_size: int = 500) -> PruneCounts:
        """Delete what is older than the ISO-8601 UTC timestamp `before`, and count it.

        That is: finished jobs (stage TERMINAL) whose `completed_at` is older, with all their events;
        webhook receipts received before it; idempotency keys created before it. Unfinished jobs and
        the events of kept jobs are never deleted. Each transaction removes at most `batch_size` jobs
        (or rows), so other writers wait for one batch at most, never for the whole pass.
        """


@runtime_checkable
class SupportsBackup(Protocol):
    """A store that copies its own database file (SQLite). A server database is backed up with its own tools.

    Neither method needs the store to be open, and neither applies migrations.
    """

    async def backup(
        self, target: str | Path, progress: BackupProgress | None = None, *, overwrite: bool = False
    ) -> BackupReport:
        """Write a consistent copy of the database to `target` while it is in use, then verify the copy.

        The copy appears at `target` only once it passed `PRAGMA integrity_check`.
        """

    async def restore(self, source: str | Path, progress: BackupProgress | None = None) -> BackupReport:
        """Replace the database with the verified backup `source`, in one transaction.

        Raises StorageUnavailable when any other connection has the database open (stop the service first).
        """
