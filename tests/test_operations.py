"""`reelay backup`, `restore` and `prune` run as an operator would, on a real database file."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import msgspec

from service.timestamps import to_iso
from storage import IdempotencyClaim, JobFilter, JobRecord, Receipt, Stage
from storage.base import Decide, Decision
from storage.sqlite import SqliteStore
from tests.storage.factories import KEY_A, encode_snapshot, make_job

replace = msgspec.structs.replace
DAY = 86_400.0


REELAY = str(Path(sys.executable).parent / "reelay")
ROOT = Path(__file__).resolve().parents[1]


def cli_env(db: Path, **env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "REELAY_RETENTION_DAYS"}
    return {**environ, "REELAY_DATABASE_URL": f"sqlite:///{db}", **env}


def run(db: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REELAY, *args], env=cli_env(db, **env), input=stdin, capture_output=True, text=True, timeout=60
    )


@asynccontextmanager
async def opened(db: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(db, encode_snapshot, clock=time.time)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def dump(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


def reported(output: str, label: str) -> int:
    found = re.search(rf"^\s*{label}:\s+(\d+)", output, re.MULTILINE)
    assert found, f"no {label!r} in {output!r}"
    return int(found.group(1))


async def add_jobs(db: Path, count: int, **changes: object) -> list[str]:
    async with opened(db) as store:
        if await store.get_api_key(KEY_A.id) is None:
            await store.create_api_key(KEY_A)
        jobs = [make_job(**changes) for _ in range(count)]
        for job in jobs:
            await store.create_job(job, "job.created")
    return [job.id for job in jobs]


# -- backup ------------------------------------------------------------------------------------


# A second process writing through the store, as the service does: each job is created, then updated.
WRITER = """
import asyncio, sys, time
from storage.sqlite import SqliteStore
from tests.storage.factories import encode_snapshot, make_job

async def main():
    store = SqliteStore(sys.argv[1], encode_snapshot, clock=time.time)
    await store.open()
    while True:
        created = await store.create_job(make_job(), "job.created")
        await store.update_job(created.job.id, lambda job: (job, "job.updated"))
        print(created.job.id, flush=True)

asyncio.run(main())
"""


async def test_a_backup_taken_while_another_process_writes_is_consistent(tmp_path: Path) -> None:
    db, copy = tmp_path / "reelay.db", tmp_path / "copy.db"
    # About 15 MB already there, so the copy takes several steps.
    await add_jobs(db, 150, input={"prompt": "x" * 100_000})
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(db), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    written: list[str] = []  # jobs whose two events are committed, in commit order

    async def follow() -> None:
        assert writer.stdout is not None
        async for line in writer.stdout:
            written.append(line.decode().strip())

    following = asyncio.create_task(follow())
    try:
        while len(written) < 5:
            await asyncio.sleep(0.02)
        before = len(written)
        backup = await asyncio.create_subprocess_exec(
            REELAY, "backup", str(copy), env=cli_env(db), stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await backup.communicate()
        after = len(written)
    finally:
        writer.kill()
        await writer.wait()
        await following
    assert backup.returncode == 0
    assert after > before, "nothing was written while the backup ran"
    assert query(copy, "PRAGMA integrity_check") == [("ok",)]
    jobs = {row[0] for row in query(copy, "SELECT id FROM jobs")}
    events = query(copy, "SELECT job_id, type FROM events ORDER BY id")
    assert reported(stdout.decode(), "jobs") == len(jobs)
    assert reported(stdout.decode(), "events") == len(events)
    in_copy = [job for job in written if job in jobs]
    assert len(jobs) - 150 in (len(in_copy), len(in_copy) + 1)  # + 1: created, update not yet committed
    assert in_copy == written[: len(in_copy)]  # one snapshot: nothing written before a copied job is missing
    assert len(in_copy) >= before
    types = [[t for j, t in events if j == job] for job in in_copy]
    assert all(t == ["job.created", "job.updated"] for t in types[:-1])
    assert {job for job, _ in events} == jobs  # no event without its job, no job without an event
    async with opened(copy) as store:
        await store.check()
        assert len(await store.list_jobs(KEY_A.id, JobFilter(), limit=1000)) == len(jobs)


def test_backup_refuses_to_overwrite_a_file_unless_forced(tmp_path: Path) -> None:
    db, target = tmp_path / "reelay.db", tmp_path / "copy.db"
    assert run(db, "migrate").returncode == 0
    target.write_bytes(b"yesterday's backup")
    refused = run(db, "backup", str(target))
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert target.read_bytes() == b"yesterday's backup"
    forced = run(db, "backup", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert query(target, "PRAGMA integrity_check") == [("ok",)]


def test_backup_of_a_postgresql_database_points_to_pg_dump(tmp_path: Path) -> None:
    for command in ("backup", "restore"):
        target = tmp_path / "copy.db"
        target.touch()
        result = run(tmp_path / "unused.db", command, str(target), REELAY_DATABASE_URL="postgresql://reelay@db/reelay")
        assert result.returncode == 1
        assert "pg_dump" in result.stderr
        assert "Traceback" not in result.stderr


# -- restore -----------------------------------------------------------------------------------


async def test_restore_by_copying_the_file_while_stopped(tmp_path: Path) -> None:
    db, backup = tmp_path / "reelay.db", tmp_path / "backup.db"
    kept = await add_jobs(db, 3)
    assert run(db, "backup", str(backup)).returncode == 0
    lost = await add_jobs(db, 1)
    # The service then dies without checkpointing: committed pages sit in the -wal file.
    crash = "import os, sqlite3; c = sqlite3.connect(os.environ['DB']); c.execute('PRAGMA wal_autocheckpoint = 0');"
    crash += "c.execute(\"UPDATE jobs SET status = 'failed'\"); c.commit(); os._exit(0)"
    subprocess.run([sys.executable, "-c", crash], env={**os.environ, "DB": str(db)}, check=True)
    assert Path(f"{db}-wal").stat().st_size > 0
    # The documented steps: copy the backup over the database, remove the -wal and -shm files, migrate.
    shutil.copyfile(backup, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    assert run(db, "migrate").returncode == 0
    async with opened(db) as store:
        await store.check()
        jobs = await store.list_jobs(KEY_A.id, JobFilter(), limit=10)
        assert sorted(job.id for job in jobs) == sorted(kept)
        assert {job.status for job in jobs} == {"queued"}
        assert await store.get_job(lost[0]) is None
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


async def test_restore_command_is_refused_while_the_database_is_open_then_restores(tmp_path: Path) -> None:
    db, backup = tmp_path / "reelay.db", tmp_path / "backup.db"
    kept = await add_jobs(db, 2)
    assert run(db, "backup", str(backup)).returncode == 0
    lost = await add_jobs(db, 1)
    async with opened(db):  # stands for the running service
        refused = run(db, "restore", "--yes", str(backup))
    assert refused.returncode == 1
    assert "in use" in refused.stderr
    assert len(query(db, "SELECT id FROM jobs")) == 3
    unconfirmed = run(db, "restore", str(backup), stdin="n\n")
    assert unconfirmed.returncode == 1
    assert len(query(db, "SELECT id FROM jobs")) == 3
    restored = run(db, "restore", "--yes", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert reported(restored.stdout, "jobs") == 2
    assert sorted(row[0] for row in query(db, "SELECT id FROM jobs")) == sorted(kept)
    assert lost[0] not in {row[0] for row in query(db, "SELECT job_id FROM events")}
    assert run(db, "migrate").returncode == 0
    async with opened(db) as store:
        await store.check()


# -- prune -------------------------------------------------------------------------------------


def finish(status: str, at: str) -> Decide:
    def decide(job: JobRecord) -> Decision:
        return replace(job, status=status, stage=Stage.TERMINAL, completed_at=at, updated_at=at), f"job.{status}"

    return decide


TO_HOOK: dict[str, Any] = {"webhook_url": "https://hooks.example/in", "webhook_events": ["job.succeeded", "job.failed"]}


async def lay_out_history(db: Path) -> list[str]:
    """Jobs finished 40 days ago, finished 5 days ago (each with a caller webhook delivery of its end), and
    started 40 days ago but never finished; an old and a recent idempotency key; an old and a recent webhook
    receipt. Returns the jobs a 30-day retention keeps."""
    now = time.time()
    old, recent = to_iso(now - 40 * DAY), to_iso(now - 5 * DAY)
    async with opened(db) as store:
        await store.create_api_key(KEY_A)
        for i, status in enumerate(("succeeded", "failed", "cancelled")):
            job = make_job(created_at=old, updated_at=old, **TO_HOOK)
            claim = IdempotencyClaim(key=f"old-{i}", request_hash="h") if i == 0 else None
            await store.create_job(job, "job.created", idempotency=claim)
            await store.update_job(job.id, lambda j: (replace(j, status="processing"), "job.updated"))
            await store.update_job(job.id, finish(status, old))
        fresh = make_job(created_at=recent, updated_at=recent, **TO_HOOK)
        await store.create_job(fresh, "job.created", idempotency=IdempotencyClaim(key="recent", request_hash="h"))
        await store.update_job(fresh.id, finish("succeeded", recent))
        stuck = make_job(created_at=old, updated_at=old, status="processing", stage=Stage.PROCESSING)
        await store.create_job(stuck, "job.created")
        for key in ("evt_old", "evt_recent"):
            await store.update_job(stuck.id, lambda j: None, receipt=Receipt(provider="seedancee2", key=key))
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("UPDATE webhook_receipts SET received_at = ? WHERE receipt_key = 'evt_old'", (old,))
        conn.commit()
    return [fresh.id, stuck.id]


async def test_prune_removes_exactly_the_old_finished_jobs_and_their_events(tmp_path: Path) -> None:
    db = tmp_path / "reelay.db"
    kept = await lay_out_history(db)
    kept_events = query(db, f"SELECT * FROM events WHERE job_id IN ('{kept[0]}', '{kept[1]}')")
    result = run(db, "prune", "--days", "30")
    assert result.returncode == 0, result.stderr
    assert (
        reported(result.stdout, "jobs"),
        reported(result.stdout, "events"),
        reported(result.stdout, "webhook receipts"),
        reported(result.stdout, "idempotency keys"),
        reported(result.stdout, "deliveries"),
    ) == (3, 9, 1, 1, 2)
    assert sorted(row[0] for row in query(db, "SELECT id FROM jobs")) == sorted(kept)
    assert sorted(query(db, "SELECT * FROM events")) == sorted(kept_events)
    assert query(db, "SELECT receipt_key FROM webhook_receipts") == [("evt_recent",)]
    assert query(db, "SELECT key FROM idempotency_keys") == [("recent",)]
    assert query(db, "SELECT job_id FROM webhook_deliveries") == [(kept[0],)]
    again = run(db, "prune", "--days", "30")
    assert reported(again.stdout, "jobs") == reported(again.stdout, "events") == 0


async def test_prune_dry_run_counts_and_removes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "reelay.db"
    await lay_out_history(db)
    before = dump(db)
    result = run(db, "prune", "--days", "30", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would remove" in result.stdout
    assert (reported(result.stdout, "jobs"), reported(result.stdout, "events")) == (3, 9)
    assert dump(db) == before


async def test_prune_takes_its_period_from_reelay_retention_days(tmp_path: Path) -> None:
    db = tmp_path / "reelay.db"
    kept = await lay_out_history(db)
    off = run(db, "prune")
    assert off.returncode == 0
    assert "retention is off" in off.stdout
    assert len(query(db, "SELECT id FROM jobs")) == 5
    longer = run(db, "prune", REELAY_RETENTION_DAYS="60")
    assert reported(longer.stdout, "jobs") == 0
    applied = run(db, "prune", REELAY_RETENTION_DAYS="30")
    assert reported(applied.stdout, "jobs") == 3
    assert sorted(row[0] for row in query(db, "SELECT id FROM jobs")) == sorted(kept)
    invalid = run(db, "prune", REELAY_RETENTION_DAYS="-1")
    assert invalid.returncode == 1
    assert "REELAY_RETENTION_DAYS" in invalid.stderr


async def finished_with_assets(db: Path, assets: Path, days_ago: float) -> str:
    """A job that succeeded `days_ago` days ago with an archived video: its file under `assets`, named in its output."""
    at = to_iso(time.time() - days_ago * DAY)
    output = {"videos": [], "last_frame_url": None, "assets": [{"variant": "video", "index": 0, "bytes": 3}]}
    async with opened(db) as store:
        if await store.get_api_key(KEY_A.id) is None:
            await store.create_api_key(KEY_A)
        job = make_job(created_at=at, updated_at=at, output=output)
        await store.create_job(job, "job.created")
        await store.update_job(job.id, finish("succeeded", at))
    (assets / job.id).mkdir(parents=True)
    (assets / job.id / "video-0").write_bytes(b"mp4")
    return job.id


async def test_prune_deletes_the_archived_assets_of_the_jobs_it_removes(tmp_path: Path) -> None:
    db, assets = tmp_path / "reelay.db", tmp_path / "assets"
    await finished_with_assets(db, assets, 40)
    recent = await finished_with_assets(db, assets, 5)
    result = run(db, "prune", "--days", "30", REELAY_ASSETS=f"file://{assets}")
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout, "jobs") == 1
    assert sorted(path.name for path in assets.iterdir()) == [recent]
    assert query(db, "SELECT id FROM jobs") == [(recent,)]


async def test_asset_retention_deletes_old_assets_and_keeps_their_jobs(tmp_path: Path) -> None:
    db, assets = tmp_path / "reelay.db", tmp_path / "assets"
    old = await finished_with_assets(db, assets, 10)
    recent = await finished_with_assets(db, assets, 1)
    env = {"REELAY_ASSETS": f"file://{assets}", "REELAY_ASSET_RETENTION_DAYS": "7"}
    dry = run(db, "prune", "--dry-run", **env)
    assert reported(dry.stdout.split("archived assets", 1)[1], "jobs") == 1
    assert (assets / old).exists()
    result = run(db, "prune", **env)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in assets.iterdir()) == [recent]
    assert sorted(row[0] for row in query(db, "SELECT id FROM jobs")) == sorted([old, recent])
    output = msgspec.json.decode(query(db, f"SELECT output FROM jobs WHERE id = '{old}'")[0][0])
    assert output["assets_expired_at"] is not None
    again = run(db, "prune", **env)
    assert reported(again.stdout.split("archived assets", 1)[1], "jobs") == 0
