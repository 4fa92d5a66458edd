"""Storage exceptions: driver errors are translated into these at the storage edge.

StorageError
 ├── StorageUnavailable     the database cannot be reached, read or written
 ├── QueryRejected          the database refused the request itself (too large, a value it cannot hold)
 ├── SchemaOutdated         migrations are missing
 └── IdempotencyConflict    the key was used before with a different request
"""

from __future__ import annotations


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
