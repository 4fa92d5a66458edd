"""SQLite-only behaviour: database URLs, faults injected through the writer connection, backup and restore."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import cast

import aiosqlite
import pytest

import storage.sqlite.backup
import storage.sqlite.writer
from storage import JobFilter, StorageError, StorageUnavailable, Store, SupportsBackup, migrations
from storage.sqlite import SqliteStore, sqlite_path
from tests.storage.conftest import Backend, SqliteBackend
from tests.storage.factories import encode_snapshot, make_job

# Faults are injected through SqliteStore's own writer connection, so these run on SQLite only.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def writer_of(store: Store) -> aiosqlite.Connection:
    writer = cast("SqliteStore", store)._writer.connection
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

    def failing_commit(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(storage.sqlite.writer, "_commit", failing_commit)
    lost = make_job()
    with pytest.raises(StorageUnavailable):
        await store.create_job(lost, "job.created")
    monkeypatch.undo()
    assert announced == []
    assert await store.get_job(lost.id) is None
    later = make_job()
    await store.create_job(later, "job.created")
    assert await store.get_job(later.id) == later


# -- backup and restore ------------------------------------------------------------------------

BIG_INPUT = {"prompt": "x" * 100_000}  # about 25 pages a job, so a copy takes several steps


def backups(store: Store) -> SupportsBackup:
    assert isinstance(store, SupportsBackup)
    return store


def integrity(path: Path) -> list[tuple[str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


async def fill(store: Store, jobs: int) -> None:
    for _ in range(jobs):
        await store.create_job(make_job(input=BIG_INPUT), "job.created")


@sqlite_only
async def test_sqlite_store_supports_backup(store: Store) -> None:
    assert isinstance(store, SupportsBackup)


@sqlite_only
async def test_a_backup_taken_during_writes_is_one_consistent_snapshot(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(store, 200)
    monkeypatch.setattr(storage.sqlite.backup, "_COPY_STEP_PAGES", 8)  # hundreds of steps, for writes to land between
    stop = asyncio.Event()
    written: list[str] = []  # jobs whose two events are committed, in commit order

    async def keep_writing() -> None:
        while not stop.is_set():
            created = await store.create_job(make_job(), "job.created")
            await store.update_job(created.job.id, lambda j: (j, "job.updated"))
            written.append(created.job.id)

    progress: list[int] = []  # how many jobs were written at each step of the copy
    writer = asyncio.create_task(keep_writing())
    while not written:
        await asyncio.sleep(0.01)
    report = await backups(store).backup(tmp_path / "copy.db", lambda copied, total: progress.append(len(written)))
    stop.set()
    await writer
    assert progress[-1] > progress[0], "nothing was written while the copy ran"
    assert integrity(tmp_path / "copy.db") == [("ok",)]
    copy = SqliteStore(tmp_path / "copy.db", encode_snapshot, clock=time.time)
    await copy.open()
    try:
        await copy.check()
        events = await copy.events_after(0, limit=100_000)
    finally:
        await copy.close()
    assert len({e.job_id for e in events}) == report.jobs
    assert len(events) == report.events
    # One snapshot, taken before the first step: what was written later is not in it, whatever the copy was doing.
    assert report.jobs - 200 <= progress[0] + 1  # + 1: a job created, its update not yet committed
    in_copy = [job for job in written if any(e.job_id == job for e in events)]
    assert in_copy == written[: len(in_copy)]  # nothing written before a copied job is missing
    types = [[e.type for e in events if e.job_id == job] for job in in_copy]
    assert all(t == ["job.created", "job.updated"] for t in types[:-1])
    assert types[-1] in (["job.created"], ["job.created", "job.updated"])  # the snapshot may fall between the two


@sqlite_only
async def test_backup_reports_its_progress_up_to_every_page(store: Store, tmp_path: Path) -> None:
    await fill(store, 200)
    seen: list[tuple[int, int]] = []
    report = await backups(store).backup(tmp_path / "copy.db", lambda copied, total: seen.append((copied, total)))
    assert len(seen) > 1
    assert [copied for copied, _ in seen] == sorted(copied for copied, _ in seen)
    total = seen[-1][1]
    assert seen[-1] == (total, total)
    assert report.size_bytes == (tmp_path / "copy.db").stat().st_size
    assert report.jobs == 200


@sqlite_only
async def test_backup_refuses_to_overwrite_unless_asked(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    target.write_bytes(b"precious")
    with pytest.raises(StorageError, match="already exists"):
        await backups(store).backup(target)
    assert target.read_bytes() == b"precious"
    await create_one(store)
    report = await backups(store).backup(target, overwrite=True)
    assert (report.jobs, integrity(target)) == (1, [("ok",)])


@sqlite_only
async def test_backup_refuses_the_database_itself(backend: Backend, store: Store) -> None:
    path = cast("SqliteBackend", backend).path
    for target in (path, Path(f"{path}-wal")):
        with pytest.raises(StorageError, match="database itself"):
            await backups(store).backup(target, overwrite=True)
    assert integrity(path) == [("ok",)]


@sqlite_only
async def test_a_failed_backup_leaves_no_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        await backups(store).backup(tmp_path / "missing-dir" / "copy.db")
    unopened = SqliteStore(tmp_path / "nothing.db", encode_snapshot, clock=time.time)
    with pytest.raises(StorageError, match="no database file"):
        await unopened.backup(tmp_path / "copy.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reelay.db", "reelay.db-shm", "reelay.db-wal"]


async def create_one(store: Store) -> str:
    job = make_job()
    await store.create_job(job, "job.created")
    return job.id


@sqlite_only
async def test_restore_replaces_the_database_with_the_backup(backend: Backend, store: Store, tmp_path: Path) -> None:
    kept = await create_one(store)
    await backups(store).backup(tmp_path / "copy.db")
    lost = await create_one(store)
    await store.close()
    report = await backups(store).restore(tmp_path / "copy.db")
    assert (report.jobs, report.events) == (1, 1)
    reopened = backend.new_store()
    await reopened.open()
    try:
        assert await reopened.get_job(lost) is None
        assert await reopened.get_job(kept) is not None
    finally:
        await reopened.close()


@sqlite_only
async def test_restore_is_refused_while_another_connection_has_the_database_open(
    backend: Backend, store: Store, tmp_path: Path
) -> None:
    job_id = await create_one(store)
    await backups(store).backup(tmp_path / "copy.db")
    await create_one(store)
    await store.close()
    service = backend.new_store()  # stands for the running service
    await service.open()
    try:
        with pytest.raises(StorageUnavailable, match="in use"):
            await backups(store).restore(tmp_path / "copy.db")
        assert len(await service.list_jobs("key_a", JobFilter(), limit=10)) == 2
        assert await service.get_job(job_id) is not None
        with pytest.raises(StorageError, match="close the store"):
            await backups(service).restore(tmp_path / "copy.db")
    finally:
        await service.close()


@sqlite_only
async def test_restore_refuses_what_is_not_a_reelay_backup(store: Store, tmp_path: Path) -> None:
    job_id = await create_one(store)
    await store.close()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 500)
    foreign = tmp_path / "foreign.db"
    with closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    for source, reason in ((garbage, "not a SQLite database"), (foreign, "not a Reelay database")):
        with pytest.raises(StorageError, match=reason):
            await backups(store).restore(source)
    await store.open()
    assert await store.get_job(job_id) is not None


@sqlite_only
async def test_restore_refuses_a_backup_from_a_newer_schema(store: Store, tmp_path: Path) -> None:
    await backups(store).backup(tmp_path / "copy.db")
    await store.close()
    with closing(sqlite3.connect(tmp_path / "copy.db")) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, '9999_future', '2099-01-01T00:00:00Z')")
        conn.commit()
    with pytest.raises(StorageError, match="newer than this Reelay"):
        await backups(store).restore(tmp_path / "copy.db")


@sqlite_only
async def test_restore_into_a_new_path_creates_the_database(store: Store, tmp_path: Path) -> None:
    job_id = await create_one(store)
    report = await backups(store).backup(tmp_path / "copy.db")
    fresh = SqliteStore(tmp_path / "elsewhere" / "reelay.db", encode_snapshot, clock=time.time)
    restored = await fresh.restore(tmp_path / "copy.db")
    assert (restored.jobs, restored.events, restored.schema_version) == (report.jobs, report.events, newest())
    await fresh.open()
    try:
        assert await fresh.get_job(job_id) is not None
    finally:
        await fresh.close()


def newest() -> int:
    return migrations.newest("sqlite")
