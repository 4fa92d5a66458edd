"""Storage exceptions: driver errors are translated into these at the storage edge.

StorageError
 ├── StorageUnavailable     the database cannot be reached, read or written
 ├── QueryRejected          the database refused the request itself (too large, a value it cannot hold)
 ├── SchemaOutdated         migrations are missing
 ├── IdempotencyConflict    the key was used before with a different request
 ├── JobNotFound            no job has the id a write names
 ├── TaskTaken              a job was given a provider task id that another job holds
 └── OverBudget             a new job's reservation would pass its key's budget; nothing was written
"""

from __future__ import annotations

from decimal import Decimal


class StorageError(Exception):
    """Base class of every storage failure."""


class StorageUnavailable(StorageError):
    """The database cannot be reached, read or written (disk full, read-only file, lost server)."""


class QueryRejected(StorageError):
    """The database refused the request itself, not for want of service: too many terms for its parser, or a
    value it cannot hold (a NUL character in PostgreSQL text). The caller's input is at fault; retrying is useless."""


class SchemaOutdated(StorageError):
    """The database schema is older than this code; run `reelay migrate`."""


class IdempotencyConflict(StorageError):
    """An idempotency key was reused with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__("idempotency key reused with a different request")
        self.job_id = job_id


class JobNotFound(StorageError):
    """A write named a job that does not exist (never created, or pruned since)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class TaskTaken(StorageError):
    """A write gave a job the provider task id that another job already holds; nothing was written."""

    def __init__(self, provider: str, provider_task_id: str, owner_job_id: str | None) -> None:
        super().__init__(f"{provider} task {provider_task_id} belongs to job {owner_job_id}")
        self.provider = provider
        self.provider_task_id = provider_task_id
        self.owner_job_id = owner_job_id


class OverBudget(StorageError):
    """A new job's estimate would take its key past a budget limit in `unit`; the job was not created."""

    def __init__(
        self, *, unit: str, limit: Decimal, spent: Decimal, reserved: Decimal, estimate: Decimal, period: str
    ) -> None:
        super().__init__(f"the {unit} budget of period {period} cannot take {estimate} more")
        self.unit = unit
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.estimate = estimate
        self.period = period
