"""SQLite-only behaviour: database URLs, and faults injected through the writer connection."""

from __future__ import annotations

import sqlite3
from typing import cast

import aiosqlite
import pytest

from storage import StorageUnavailable, Store
from storage.sqlite import SqliteStore, sqlite_path
from tests.storage.conftest import Backend
from tests.storage.factories import make_job

# Faults are injected through SqliteStore's own writer connection, so these run on SQLite only.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def writer_of(store: Store) -> aiosqlite.Connection:
    writer = cast("SqliteStore", store)._writer
    assert writer is not None
    return writer


async def fill_disk(store: Store) -> None:
    """Cap the database at its current size, as a full disk would."""
    writer = writer_of(store)
    rows = await writer.execute_fetchall("PRAGMA page_count")
    await writer.execute(f"PRAGMA max_page_count = {next(iter(rows))[0]}")


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///reelay.db", "reelay.db"), ("sqlite:////var/lib/reelay.db", "/var/lib/reelay.db")],
)
def test_sqlite_path_of_relative_and_absolute_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///", "postgresql://localhost/reelay"])
def test_sqlite_path_refuses_what_is_not_a_shared_file(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message differs per case
        sqlite_path(url)


@sqlite_only
async def test_check_reports_a_read_only_database(store: Store) -> None:
    await writer_of(store).execute("PRAGMA query_only = ON")
    with pytest.raises(StorageUnavailable):
        await store.check()


@sqlite_only
async def test_writes_to_a_read_only_database_are_unavailable(store: Store) -> None:
    await writer_of(store).execute("PRAGMA query_only = ON")
    job = make_job()
    with pytest.raises(StorageUnavailable):
        await store.create_job(job, "job.created")
    assert await store.get_job(job.id) is None


@sqlite_only
async def test_a_full_disk_is_unavailable_and_corrupts_nothing(backend: Backend, store: Store) -> None:
    kept = make_job()
    created = await store.create_job(kept, "job.created")
    await fill_disk(store)
    refused = make_job(input={"prompt": "x" * 200_000})
    with pytest.raises(StorageUnavailable):
        await store.create_job(refused, "job.created")
    assert await backend.execute("PRAGMA integrity_check") == [("ok",)]
    assert await store.get_job(kept.id) == kept
    assert await store.get_job(refused.id) is None
    assert await store.events_after(0) == [created.event]


@sqlite_only
async def test_writes_resume_once_the_disk_has_room(store: Store) -> None:
    await fill_disk(store)
    with pytest.raises(StorageUnavailable):
        await store.create_job(make_job(input={"prompt": "x" * 200_000}), "job.created")
    await writer_of(store).execute("PRAGMA max_page_count = 1000000")
    job = make_job(input={"prompt": "x" * 200_000})
    await store.create_job(job, "job.created")
    assert await store.get_job(job.id) == job


@sqlite_only
async def test_a_failed_commit_is_unavailable_and_leaves_the_store_writable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    announced: list[object] = []
    store.add_listener(announced.append)

    async def failing_commit() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writer_of(store), "commit", failing_commit)
    lost = make_job()
    with pytest.raises(StorageUnavailable):
        await store.create_job(lost, "job.created")
    monkeypatch.undo()
    assert announced == []
    assert await store.get_job(lost.id) is None
    later = make_job()
    await store.create_job(later, "job.created")
    assert await store.get_job(later.id) == later
