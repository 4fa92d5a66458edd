"""Readiness: the database answers, takes writes, has the current schema, and has disk space left."""

from __future__ import annotations

import shutil
from pathlib import Path

import structlog

from service.errors import NotReady
from service.settings import Settings
from storage import SchemaOutdated, StorageUnavailable, Store

log = structlog.get_logger("reelay.health")


async def check_ready(store: Store, settings: Settings) -> None:
    """Raise NotReady with a code and a message an operator can act on."""
    free = _free_bytes(settings.database_url)
    if free is not None and free < settings.min_free_disk_bytes:
        log.error("readyz.disk_full", free_bytes=free, min_free_bytes=settings.min_free_disk_bytes)
        raise NotReady(
            f"the database disk has {free} bytes free, below REELAY_MIN_FREE_DISK_BYTES "
            f"({settings.min_free_disk_bytes}); free space before accepting jobs",
            code="disk_full",
        )
    try:
        await store.check()
    except SchemaOutdated as exc:
        raise NotReady(str(exc), code="schema_outdated") from None
    except StorageUnavailable as exc:
        log.error("readyz.storage_unavailable", error=str(exc))
        raise NotReady(
            "the database is not reachable or not writable (read-only file or disk, or I/O error)", code="unavailable"
        ) from None


def _free_bytes(database_url: str) -> int | None:
    if not database_url.startswith("sqlite:///"):
        return None  # a database server watches its own disk
    folder = Path(database_url.removeprefix("sqlite:///")).resolve().parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
