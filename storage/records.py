"""Plain records that cross the storage boundary: what is stored, not how it is shown."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgspec


class Stage(IntEnum):
    """How far a job has come; a job's stage never decreases."""

    QUEUED = 0
    SUBMITTED = 1
    PROCESSING = 2
    TERMINAL = 3


class DispatchState:
    """Outbox state of a job's upstream create."""

    PENDING = "pending"  # not yet sent, or safe to send again
    SENDING = "sending"  # a create may be in flight; its outcome is unknown after a crash
    DONE = "done"  # the provider accepted it, or the job ended before it was sent


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    secret_hash: bytes
    created_at: str
    revoked_at: str | None = None


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    api_key_id: str
    model: str
    provider: str
    status: str
    stage: int
    input: dict[str, Any]
    metadata: dict[str, str]
    cost: dict[str, Any]
    callback_token: str
    created_at: str
    updated_at: str
    deadline_at: float
    provider_task_id: str | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    completed_at: str | None = None
    dispatch_state: str = DispatchState.PENDING
    dispatch_attempts: int = 0
    next_attempt_at: float | None = None
    next_poll_at: float | None = None
    poll_attempts: int = 0
    lease_until: float | None = None


# How every backend lays a JobRecord out in its `jobs` table: set once at insert, then rewritten on each update.
JOB_FIXED_COLUMNS = ("id", "api_key_id", "model", "provider", "input", "metadata", "callback_token", "created_at")
JOB_MUTABLE_COLUMNS = (
    "status",
    "stage",
    "provider_task_id",
    "output",
    "error",
    "cost",
    "updated_at",
    "completed_at",
    "deadline_at",
    "dispatch_state",
    "dispatch_attempts",
    "next_attempt_at",
    "next_poll_at",
    "poll_attempts",
    "lease_until",
)


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the event log; `job` is the job's JSON as it was right after the change."""

    id: int
    job_id: str
    api_key_id: str
    type: str
    created_at: str
    job: bytes


class IdempotencyClaim(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    request_hash: str


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """Identifies one delivered webhook so a redelivery is recognised."""

    provider: str
    key: str


class CreateOutcome(msgspec.Struct, frozen=True, kw_only=True):
    job: JobRecord
    created: bool
    event: EventRecord | None = None


class Declined(msgspec.Struct, frozen=True):
    """A decision to leave a job as it is, and why: the update then writes nothing, not even its receipt."""

    reason: str


class UpdateOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What an update did: `job` is the job as it now stands; `declined` is the reason a decision gave for
    writing nothing, if it gave one."""

    job: JobRecord
    event: EventRecord | None = None
    changed: bool = False
    duplicate: bool = False
    declined: str | None = None


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    status: str | None = None
    model: str | None = None
    provider: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs of one key grouped by creation day, model and status, with their costs summed exactly.

    A sum is None when no job of the group has that figure; `without` counts, per figure, the jobs that lack it
    (no published price, or not charged yet), which its sum leaves out.
    """

    day: str
    model: str
    status: str
    jobs: int
    credits_estimate: Decimal | None = None
    credits_charged: Decimal | None = None
    usd_estimate: Decimal | None = None
    usd_charged: Decimal | None = None
    without: dict[str, int] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UsageRow:
        """From (day, model, status, jobs, then a sum and a count of jobs with the figure per COST_FIELDS), as
        both backends select it; a sum arrives as exact text (SQLite) or numeric (PostgreSQL), never as float."""
        jobs = int(row[3])
        pairs = dict(zip(COST_FIELDS, zip(row[4::2], row[5::2], strict=True), strict=True))
        sums = {field: None if total is None else Decimal(total) for field, (total, _) in pairs.items()}
        without = {field: jobs - int(having) for field, (_, having) in pairs.items()}
        return cls(day=row[0], model=row[1], status=row[2], jobs=jobs, without=without, **sums)


COST_FIELDS = ("credits_estimate", "credits_charged", "usd_estimate", "usd_charged")


class PruneCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Rows a retention pass removed, or would remove."""

    jobs: int = 0
    events: int = 0
    webhook_receipts: int = 0
    idempotency_keys: int = 0


class BackupReport(msgspec.Struct, frozen=True, kw_only=True):
    """A database file just written by a backup or a restore, as verified after writing."""

    path: str
    size_bytes: int
    jobs: int
    events: int
    schema_version: int
