"""The asset store's contract, run against both backends: files on disk, and S3 (moto's server, tests/s3.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.assets import AssetStore, asset_key
from service.assets.store import STALE_TEMP_SECONDS, TEMP_MARK, FileAssets, open_assets
from service.errors import ConfigError
from service.providers import ADAPTERS
from service.settings import Settings
from tests.s3 import S3Server

MiB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
async def assets(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AssetStore]:
    if request.param == "file":
        environ = {"REELAY_ASSETS": f"file://{tmp_path / 'assets'}"}
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        environ = server.environ(server.bucket())
    store = open_assets(Settings.from_env(environ, adapters=ADAPTERS))
    assert store is not None
    yield store
    await store.close()


async def chunks_of(data: bytes, size: int = 64 * 1024, *, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        if fail_after is not None and offset >= fail_after:
            raise RuntimeError("the download broke")
        yield data[offset : offset + size]


async def read_all(store: AssetStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


DATA = os.urandom(3 * MiB + 12345)


async def test_put_returns_size_and_read_returns_the_bytes(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    assert await assets.put(key, chunks_of(DATA), content_type="video/mp4") == len(DATA)
    assert await assets.size(key) == len(DATA)
    assert await read_all(assets, key) == DATA


async def test_ranged_reads_return_exactly_the_range(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    await assets.put(key, chunks_of(DATA), content_type="video/mp4")
    assert await read_all(assets, key, 0, 10) == DATA[:10]
    assert await read_all(assets, key, 1000, 1000 + 2 * MiB) == DATA[1000 : 1000 + 2 * MiB]
    assert await read_all(assets, key, len(DATA) - 7) == DATA[-7:]
    assert await read_all(assets, key, len(DATA) - 1, len(DATA)) == DATA[-1:]
    assert await read_all(assets, key, 5, 5) == b""


async def test_a_read_from_the_end_or_beyond_returns_no_bytes(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    await assets.put(key, chunks_of(b"0123456789"), content_type="video/mp4")
    assert await read_all(assets, key, 10) == b""
    assert await read_all(assets, key, 15) == b""
    assert await read_all(assets, key, 10, 20) == b""
    assert await read_all(assets, key, 5, 20) == b"56789"


async def test_reads_come_in_bounded_chunks(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    await assets.put(key, chunks_of(DATA, size=MiB), content_type="video/mp4")
    sizes = [len(chunk) async for chunk in assets.read(key)]
    assert len(sizes) > 1
    assert max(sizes) <= 2 * MiB


async def test_put_replaces_the_previous_object(assets: AssetStore) -> None:
    key = asset_key("job1", "thumbnail", 0)
    await assets.put(key, chunks_of(DATA), content_type="image/jpeg")
    await assets.put(key, chunks_of(b"smaller"), content_type="image/jpeg")
    assert await assets.size(key) == 7
    assert await read_all(assets, key) == b"smaller"


async def test_put_whose_chunks_fail_midway_leaves_no_object(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    with pytest.raises(RuntimeError, match="the download broke"):
        await assets.put(key, chunks_of(DATA, fail_after=2 * MiB), content_type="video/mp4")
    assert await assets.size(key) is None
    with pytest.raises(FileNotFoundError):
        await read_all(assets, key)


async def test_put_whose_chunks_fail_midway_keeps_the_previous_version(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    await assets.put(key, chunks_of(b"first version"), content_type="video/mp4")
    with pytest.raises(RuntimeError, match="the download broke"):
        await assets.put(key, chunks_of(DATA, fail_after=2 * MiB), content_type="video/mp4")
    assert await read_all(assets, key) == b"first version"


async def test_a_cancelled_put_leaves_the_previous_version(assets: AssetStore) -> None:
    key = asset_key("job1", "video", 0)
    await assets.put(key, chunks_of(b"first version"), content_type="video/mp4")
    started, never = asyncio.Event(), asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield bytes(6 * MiB)
        started.set()
        await never.wait()
        yield b"never sent"

    put = asyncio.create_task(assets.put(key, stalled(), content_type="video/mp4"))
    await started.wait()
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert await read_all(assets, key) == b"first version"


async def test_absent_key_has_no_size_and_cannot_be_read(assets: AssetStore) -> None:
    assert await assets.size(asset_key("nojob", "video", 0)) is None
    with pytest.raises(FileNotFoundError):
        await read_all(assets, asset_key("nojob", "video", 0))


async def test_delete_removes_the_keys_and_ignores_absent_ones(assets: AssetStore) -> None:
    kept, gone = asset_key("job1", "video", 0), asset_key("job1", "video", 1)
    for key in (kept, gone):
        await assets.put(key, chunks_of(b"bytes"), content_type="video/mp4")
    await assets.delete([gone, asset_key("job1", "video", 9), asset_key("nojob", "video", 0)])
    await assets.delete([])
    assert await assets.size(gone) is None
    assert await assets.size(kept) == 5


async def test_delete_job_removes_every_object_of_that_job_only(assets: AssetStore) -> None:
    keys = [asset_key("job1", "video", 0), asset_key("job1", "thumbnail", 0), asset_key("job1", "last_frame", 0)]
    other = asset_key("job10", "video", 0)
    for key in [*keys, other]:
        await assets.put(key, chunks_of(b"bytes"), content_type="video/mp4")
    await assets.delete_job("job1")
    await assets.delete_job("nojob")
    assert [await assets.size(key) for key in keys] == [None, None, None]
    assert await assets.size(other) == 5


async def test_concurrent_puts_to_different_keys_each_keep_their_bytes(assets: AssetStore) -> None:
    contents = {asset_key(f"job{i}", "video", 0): os.urandom(MiB + i) for i in range(8)}
    sizes = await asyncio.gather(
        *(assets.put(key, chunks_of(data), content_type="video/mp4") for key, data in contents.items())
    )
    assert sizes == [len(data) for data in contents.values()]
    for key, data in contents.items():
        assert await read_all(assets, key) == data


async def test_keys_that_could_leave_the_store_are_refused(assets: AssetStore) -> None:
    for key in ("../escape", "job/../../escape", "/abs", "job//video-0", f"job/video-0{TEMP_MARK}x"):
        with pytest.raises(ValueError, match="not an asset key"):
            await assets.put(key, chunks_of(b"x"), content_type="video/mp4")
    with pytest.raises(ValueError, match="not an asset key"):
        await assets.delete_job("../job")


def _peak_rss_growth_start() -> int:
    """Reset the process's peak RSS to its current RSS (Linux), and return that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


async def test_a_large_object_is_streamed_in_and_out_with_bounded_memory(assets: AssetStore) -> None:
    """50 MiB through put and read: the process's peak RSS (Python's and obstore's Rust buffers alike) grows by
    well under the object's size."""
    total, block = 50 * MiB, os.urandom(MiB)
    expected = hashlib.sha256()
    for index in range(total // MiB):
        expected.update(index.to_bytes(4, "big") + block[4:])

    async def generated() -> AsyncIterator[bytes]:
        for index in range(total // MiB):
            yield index.to_bytes(4, "big") + block[4:]

    key = asset_key("big", "video", 0)
    await assets.put(key, chunks_of(b"warm-up"), content_type="video/mp4")  # loads the backend's code first
    await read_all(assets, key)
    before = _peak_rss_growth_start()
    assert await assets.put(key, generated(), content_type="video/mp4") == total
    digest, size = hashlib.sha256(), 0
    async for chunk in assets.read(key):
        digest.update(chunk)
        size += len(chunk)
    growth = _status_bytes("VmHWM") - before
    assert (size, digest.hexdigest()) == (total, expected.hexdigest())
    assert growth < 24 * MiB, f"peak RSS grew by {growth / MiB:.1f} MiB for a {total // MiB} MiB object"


# File backend only.


async def test_file_store_is_made_on_first_put_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_assets(Settings.from_env({}, adapters=ADAPTERS))
    assert isinstance(store, FileAssets)
    assert store.root == tmp_path / "var" / "assets"
    assert not store.root.exists()
    await store.put(asset_key("job1", "video", 0), chunks_of(b"bytes"), content_type="video/mp4")
    assert (tmp_path / "var" / "assets" / "job1" / "video-0").read_bytes() == b"bytes"


async def test_file_put_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    store = FileAssets.open(tmp_path)
    await store.put(asset_key("job1", "video", 0), chunks_of(DATA), content_type="video/mp4")
    with pytest.raises(RuntimeError):
        await store.put(asset_key("job1", "video", 1), chunks_of(DATA, fail_after=MiB), content_type="video/mp4")
    put = asyncio.create_task(store.put(asset_key("job1", "video", 2), _stalled_after(MiB), content_type="video/mp4"))
    while not list((tmp_path / "job1").glob(f"video-2{TEMP_MARK}*")):
        await asyncio.sleep(0.01)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert sorted(p.name for p in (tmp_path / "job1").iterdir()) == ["video-0"]


async def _stalled_after(size: int) -> AsyncIterator[bytes]:
    yield bytes(size)
    await asyncio.Event().wait()
    yield b""


CRASHING_PUT = """
import asyncio, os, sys
from pathlib import Path
from service.assets.store import FileAssets

async def chunks():
    for index in range(64):
        if index == 8:
            os.kill(os.getpid(), 9)
        yield bytes(1024 * 1024)

asyncio.run(FileAssets.open(Path(sys.argv[1])).put("job1/video-0", chunks(), content_type="video/mp4"))
"""


async def test_file_put_killed_midway_leaves_no_visible_object_and_its_leftover_is_removed_later(
    tmp_path: Path,
) -> None:
    store = FileAssets.open(tmp_path)
    await store.put("job1/video-0", chunks_of(b"previous"), content_type="video/mp4")
    done = subprocess.run([sys.executable, "-c", CRASHING_PUT, str(tmp_path)], check=False, timeout=60)
    assert done.returncode == -9
    (leftover,) = (tmp_path / "job1").glob(f"video-0{TEMP_MARK}*")
    assert leftover.stat().st_size > 0
    assert await read_all(store, "job1/video-0") == b"previous"
    # A temporary file this recent may be another process's copy under way: opening the store keeps it.
    FileAssets.open(tmp_path)
    assert leftover.exists()
    stale = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(leftover, (stale, stale))
    FileAssets.open(tmp_path)
    assert sorted(p.name for p in (tmp_path / "job1").iterdir()) == ["video-0"]


async def test_a_read_under_way_keeps_returning_the_version_it_started_on(tmp_path: Path) -> None:
    store = FileAssets.open(tmp_path)
    await store.put("job1/video-0", chunks_of(DATA), content_type="video/mp4")
    reader = store.read("job1/video-0")
    first = await anext(reader)
    await store.put("job1/video-0", chunks_of(b"replaced"), content_type="video/mp4")
    assert first + b"".join([chunk async for chunk in reader]) == DATA


# S3 backend only.


async def test_s3_object_keeps_its_content_type_under_the_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    store = open_assets(Settings.from_env(s3_server.environ(bucket, "some/prefix"), adapters=ADAPTERS))
    assert store is not None
    await store.put("job1/thumbnail-0", chunks_of(b"jpeg bytes"), content_type="image/jpeg")
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{s3_server.endpoint_url}/{bucket}/some/prefix/job1/thumbnail-0")
    assert answer.status_code == 200
    assert (answer.content, answer.headers["content-type"]) == (b"jpeg bytes", "image/jpeg")


# open_assets and its settings.


def test_assets_off_means_no_store() -> None:
    assert open_assets(Settings.from_env({"REELAY_ASSETS": "off"}, adapters=ADAPTERS)) is None


@pytest.mark.parametrize("value", ["ftp://host/dir", "file://", "s3://", "s3:///prefix", "./var/assets", "yes"])
def test_a_bad_assets_value_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^REELAY_ASSETS must be file://<dir>, s3://<bucket>/<prefix> or off"):
        Settings.from_env({"REELAY_ASSETS": value}, adapters=ADAPTERS)


@pytest.mark.parametrize("value", ["127.0.0.1:9000", "not a url", "ftp://host", "http://"])
def test_a_bad_s3_endpoint_is_a_config_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^REELAY_S3_ENDPOINT_URL must be an http:// or https:// URL"):
        Settings.from_env({"REELAY_ASSETS": "s3://bucket", "REELAY_S3_ENDPOINT_URL": value}, adapters=ADAPTERS)


def test_a_file_store_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    settings = Settings.from_env({"REELAY_ASSETS": f"file://{tmp_path / 'taken'}"}, adapters=ADAPTERS)
    with pytest.raises(ConfigError, match="is not a directory"):
        open_assets(settings)


def test_s3_settings_come_from_the_aws_variables() -> None:
    settings = Settings.from_env(
        {
            "REELAY_ASSETS": "s3://bucket/prefix",
            "REELAY_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
            "AWS_DEFAULT_REGION": "eu-west-3",
        },
        adapters=ADAPTERS,
    )
    assert (settings.assets, settings.s3_endpoint_url) == ("s3://bucket/prefix", "http://127.0.0.1:9000")
    assert (settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_region) == (
        "id",
        "secret",
        "eu-west-3",
    )


async def test_s3_put_raises_the_chunks_error_even_when_aborting_the_upload_fails(s3_server: S3Server) -> None:
    """The archiver tells a broken download or a size cap by the error its chunks raise: an S3 server that cannot
    abort the upload (here: its bucket is gone) must not replace it."""
    bucket = s3_server.bucket()
    store = open_assets(Settings.from_env(s3_server.environ(bucket), adapters=ADAPTERS))
    assert store is not None

    async def chunks() -> AsyncIterator[bytes]:
        yield bytes(6 * MiB)  # more than one part: the multipart upload has begun
        async with httpx.AsyncClient() as client:
            (await client.delete(f"{s3_server.endpoint_url}/{bucket}")).raise_for_status()
        raise RuntimeError("too large")

    with pytest.raises(RuntimeError, match="too large"):
        await store.put("job1/video-0", chunks(), content_type="video/mp4")


def test_a_bad_assets_value_stops_reelay_serve_with_one_line(tmp_path: Path) -> None:
    environ = {
        **os.environ,
        "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'reelay.db'}",
        "REELAY_ASSETS": "nfs://somewhere",
    }
    reelay = str(Path(sys.executable).parent / "reelay")
    result = subprocess.run([reelay, "serve"], env=environ, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "Error: REELAY_ASSETS must be file://<dir>, s3://<bucket>/<prefix> or off, got 'nfs://somewhere'"
    ]
