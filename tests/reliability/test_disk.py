"""A full disk and a read-only database, for real (a tiny tmpfs): a clear 503, no 5xx of another kind,
no corruption, and recovery once the operator fixes it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import Stack, stack
from tests.processes import REELAY

JOB = {"model": "seedancee2/mini", "input": {"prompt": "p", "resolution": "480p"}}


@contextmanager
def tiny_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    """A small tmpfs of our own (this suite runs as root, as CI does)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path) -> Path:
    junk = disk / "junk"
    # Unbuffered: a buffered file keeps what the full disk refused and raises again when it is closed.
    with junk.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return junk


async def _create(s: Stack) -> int:
    return (await s.client.post(f"{s.url}/v1/jobs", json=JOB, headers=s.headers)).status_code


def _integrity(database: Path) -> str:
    with sqlite3.connect(database) as conn:
        result: str = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return result


async def test_full_disk_gives_503_and_recovers_without_corruption(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk") as disk:
        async with stack(disk, min_free_disk_bytes=512 * 1024) as s:
            assert await _create(s) == 202
            junk = _fill(disk)
            ready = await s.client.get(f"{s.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "disk_full"
            assert "REELAY_MIN_FREE_DISK_BYTES" in ready.json()["error"]["message"]
            statuses = {await _create(s) for _ in range(20)}
            assert statuses <= {202, 503}  # a write that still fits is fine; none fails any other way
            assert 503 in statuses
            refused = await s.client.post(f"{s.url}/v1/jobs", json=JOB, headers=s.headers)
            assert refused.json()["error"]["code"] == "unavailable"
            assert (await s.client.get(f"{s.url}/healthz")).status_code == 200
            junk.unlink()
            assert (await s.client.get(f"{s.url}/readyz")).status_code == 200
            assert await _create(s) == 202
            listed = (await s.client.get(f"{s.url}/v1/jobs?limit=100", headers=s.headers)).json()["data"]
            assert len(listed) == 2 + sum(1 for status in statuses if status == 202)
        assert _integrity(disk / "reelay.db") == "ok"


async def test_database_turning_read_only_gives_503_and_recovers(tmp_path: Path) -> None:
    # A mount cannot turn read-only under open files, so the running service's writer connection is
    # switched to query_only: SQLite then refuses writes exactly as for a read-only file.
    async with stack(tmp_path) as s:
        assert await _create(s) == 202
        writer = s.store._writer.connection
        await writer.execute("PRAGMA query_only = ON")
        try:
            ready = await s.client.get(f"{s.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "unavailable"
            assert "read-only" in ready.json()["error"]["message"]
            refused = await s.client.post(f"{s.url}/v1/jobs", json=JOB, headers=s.headers)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "unavailable"
            assert (await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).status_code == 200  # reads work
        finally:
            await writer.execute("PRAGMA query_only = OFF")
        assert (await s.client.get(f"{s.url}/readyz")).status_code == 200
        assert await _create(s) == 202
    assert _integrity(tmp_path / "reelay.db") == "ok"


def test_serve_on_a_read_only_disk_refuses_to_start_with_a_clear_error(tmp_path: Path) -> None:
    writable = tmp_path / "data"
    writable.mkdir()
    env = {**os.environ, "REELAY_DATABASE_URL": f"sqlite:///{writable / 'reelay.db'}"}
    subprocess.run([REELAY, "migrate"], env=env, check=True, capture_output=True)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    subprocess.run(["mount", "--bind", str(writable), str(read_only)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(read_only)], check=True)
        env["REELAY_DATABASE_URL"] = f"sqlite:///{read_only / 'reelay.db'}"
        result = subprocess.run([REELAY, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(read_only)], check=False)
    assert result.returncode != 0
    assert f"cannot open the database {read_only / 'reelay.db'}" in result.stderr
    assert "read-only" in result.stderr
    assert "Traceback" not in result.stderr
    assert _integrity(writable / "reelay.db") == "ok"


@pytest.fixture(autouse=True)
def _root_only() -> None:
    assert os.geteuid() == 0, "these tests mount a tmpfs; run them as root (CI does)"
