"""Persistence for Reelay: the storage contract and its backends."""

from __future__ import annotations

from storage.archives import ArchiveRecord, asset_items
from storage.base import (
    BackupProgress,
    Clock,
    Decide,
    Decision,
    JobEncoder,
    SharesLimits,
    Store,
    SupportsBackup,
)
from storage.errors import (
    IdempotencyConflict,
    JobNotFound,
    OverBudget,
    QueryRejected,
    SchemaOutdated,
    StorageError,
    StorageUnavailable,
    TaskTaken,
)
from storage.records import (
    ApiKeyRecord,
    AttemptRecord,
    AttemptResult,
    BackupReport,
    BudgetTotals,
    ClaimedDelivery,
    CreateOutcome,
    Declined,
    DeliveryCounts,
    DeliveryRecord,
    DeliveryStatus,
    DeliveryView,
    DispatchState,
    EndpointChange,
    EndpointRecord,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PruneCounts,
    Receipt,
    SigningSecret,
    Stage,
    UpdateOutcome,
    UsageRow,
)


def create_store(
    database_url: str,
    encode_job: JobEncoder,
    *,
    clock: Clock,
    sqlite_synchronous: str = "FULL",
    first_delivery_delay: float = 0.0,
    archive: bool = False,
) -> Store:
    """The backend a database URL names: `sqlite:///path`, or `postgresql://...` for several replicas.

    `clock` stamps what the store dates itself (webhook receipts, applied migrations, deliveries it records);
    `first_delivery_delay` is how long after its event a caller webhook delivery is first due; `archive` queues
    each job that succeeds with result URLs for the archiver (set when the asset store is on).
    """
    # Imported here: each backend pulls in its driver, and asyncpg is an optional dependency.
    if database_url.startswith("sqlite:"):
        from storage.sqlite import SqliteStore, sqlite_path

        return SqliteStore(
            sqlite_path(database_url),
            encode_job,
            clock=clock,
            synchronous=sqlite_synchronous,
            first_delivery_delay=first_delivery_delay,
            archive=archive,
        )
    if database_url.startswith(("postgresql:", "postgres:")):
        try:
            from storage.postgres import PostgresStore
        except ModuleNotFoundError as exc:
            raise ValueError(f"{exc.name} is not installed: pip install 'reelay[postgres]'") from exc
        return PostgresStore(
            database_url, encode_job, clock=clock, first_delivery_delay=first_delivery_delay, archive=archive
        )
    raise ValueError(f"unsupported REELAY_DATABASE_URL scheme: {database_url.split(':', 1)[0]!r}")


__all__ = [
    "ApiKeyRecord",
    "ArchiveRecord",
    "AttemptRecord",
    "AttemptResult",
    "BackupProgress",
    "BackupReport",
    "BudgetTotals",
    "ClaimedDelivery",
    "Clock",
    "CreateOutcome",
    "Decide",
    "Decision",
    "Declined",
    "DeliveryCounts",
    "DeliveryRecord",
    "DeliveryStatus",
    "DeliveryView",
    "DispatchState",
    "EndpointChange",
    "EndpointRecord",
    "EventRecord",
    "IdempotencyClaim",
    "IdempotencyConflict",
    "JobFilter",
    "JobNotFound",
    "JobRecord",
    "OverBudget",
    "PruneCounts",
    "QueryRejected",
    "Receipt",
    "SchemaOutdated",
    "SharesLimits",
    "SigningSecret",
    "Stage",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "SupportsBackup",
    "TaskTaken",
    "UpdateOutcome",
    "UsageRow",
    "asset_items",
    "create_store",
]
