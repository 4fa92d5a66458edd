"""Consistent copies of a SQLite database file while it is in use (backup), and back (restore), each verified."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import msgspec

from storage.base import BackupProgress
from storage.errors import StorageError, StorageUnavailable
from storage.records import BackupReport
from storage.sqlite.errors import translated

_COPY_STEP_PAGES = 1024  # pages copied between progress reports (4 MiB with the default page size)


async def backup(
    source: Path, target: Path, progress: BackupProgress | None = None, *, overwrite: bool = False
) -> BackupReport:
    """Copy the database `source` to `target`, which appears only once the copy passed its integrity check."""
    return await _in_thread(lambda step: _backup(source, target, step, overwrite=overwrite), progress)


async def restore(source: Path, database: Path, progress: BackupProgress | None = None, *, newest: int) -> BackupReport:
    """Replace `database` with the verified backup `source` (of schema version `newest` at most), in one
    transaction; raises StorageUnavailable while any other connection has the database open."""
    return await _in_thread(lambda step: _restore(source, database, step, newest=newest), progress)


_Step = Callable[[int, int, int], object]
"""The progress callback of sqlite3.Connection.backup: (status, remaining pages, total pages)."""


class _Abandoned(Exception):
    """Raised from a copy's progress callback to abort it, the one way sqlite3 offers: it rolls the copy back."""


async def _in_thread(work: Callable[[_Step], BackupReport], progress: BackupProgress | None) -> BackupReport:
    """Run a file copy in a worker thread, reporting its progress on the event loop."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def step(status: int, remaining: int, total: int) -> None:
        if stop.is_set():
            raise _Abandoned
        if progress is not None:
            loop.call_soon_threadsafe(progress, total - remaining, total)

    try:
        with translated():
            return await asyncio.to_thread(work, step)
    except asyncio.CancelledError:
        stop.set()  # a thread cannot be cancelled; it stops at its next step
        raise


def _backup(source: Path, target: Path, step: _Step, *, overwrite: bool) -> BackupReport:
    _require_file(source)
    if target.resolve() in _database_files(source):
        raise StorageError("the backup cannot be written over the database itself")
    if target.is_dir():
        raise StorageError(f"{target} is a directory; give a file name")
    if target.exists() and not overwrite:
        raise StorageError(f"{target} already exists")
    if not target.parent.is_dir():
        raise StorageError(f"directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")  # the target appears only once the copy is verified
    _remove_files(partial)
    try:
        with closing(_connect_existing(source)) as src, closing(sqlite3.connect(partial)) as dst:
            # A read transaction held across steps pins one snapshot. Without it, every commit by another
            # connection restarts the copy, and a busy service can keep it from ever finishing.
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master")
            src.backup(dst, pages=_COPY_STEP_PAGES, progress=step)
            src.execute("COMMIT")
        report = _verify(partial)
        os.replace(partial, target)
    except BaseException:
        _remove_files(partial)
        raise
    return msgspec.structs.replace(report, path=str(target))


def _restore(source: Path, database: Path, step: _Step, *, newest: int) -> BackupReport:
    _require_file(source)
    if source.resolve() in _database_files(database):
        raise StorageError("the backup is the database itself")
    found = _verify(source)
    if found.schema_version > newest:
        raise StorageError(
            f"{source} has schema version {found.schema_version}, newer than this Reelay knows ({newest}); "
            "restore it with the version that wrote it"
        )
    database.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(database, isolation_level=None, timeout=1.0)) as dst:
        # In WAL mode every open connection holds a shared lock on the file for as long as it is open, so an
        # exclusive lock is granted only when no other connection on this host has the database open.
        # Exclusive locking mode keeps it until this connection closes.
        dst.execute("PRAGMA locking_mode = EXCLUSIVE")
        try:
            dst.execute("BEGIN EXCLUSIVE")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(
                f"{database} is in use: stop the service and any other reelay command, then restore"
            ) from exc
        dst.execute("COMMIT")
        with closing(_connect_existing(source)) as src:
            # One transaction on the destination: interrupted, it rolls back to the old database.
            src.backup(dst, pages=_COPY_STEP_PAGES, progress=step)
    return _verify(database)


def _verify(path: Path) -> BackupReport:
    """Check a database file's integrity and count what it holds."""
    with closing(_connect_existing(path)) as conn:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked or unreadable: about access, not about what the file holds
            raise StorageError(f"{path} is not a SQLite database ({exc})") from exc
        if problems != ["ok"]:
            raise StorageUnavailable(f"{path} fails its integrity check: {'; '.join(problems[:5])}")
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"schema_migrations", "jobs", "events"} <= tables:
            raise StorageError(f"{path} is not a Reelay database")
        version, jobs, events = conn.execute(
            "SELECT (SELECT max(version) FROM schema_migrations), (SELECT count(*) FROM jobs), "
            "(SELECT count(*) FROM events)"
        ).fetchone()
    # Measured after closing: the last connection folds the WAL into the file.
    return BackupReport(
        path=str(path), size_bytes=path.stat().st_size, jobs=jobs, events=events, schema_version=version or 0
    )


def _connect_existing(path: Path) -> sqlite3.Connection:
    """A connection to a database file that must exist (sqlite3.connect would create an empty one)."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise StorageError(f"no database file at {path}")


def _database_files(path: Path) -> set[Path]:
    """The database file and the journal files SQLite keeps beside it."""
    resolved = path.resolve()
    return {resolved, *(resolved.with_name(resolved.name + suffix) for suffix in ("-wal", "-shm", "-journal"))}


def _remove_files(path: Path) -> None:
    for name in _database_files(path):
        name.unlink(missing_ok=True)
