"""The asset store's two backends, and `open_assets`, which picks one from REELAY_ASSETS.

`FileAssets` keeps each object as a file under a directory (written to a temporary name beside it, synced, then
renamed over it); `S3Assets` keeps them in an S3-compatible bucket through obstore (a streamed multipart upload that
S3 makes visible only when it completes). Reading an absent object raises FileNotFoundError on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from service.errors import ConfigError

if TYPE_CHECKING:
    from obstore.store import S3Store

    from service.assets import AssetStore
    from service.settings import Settings

_T = TypeVar("_T")

READ_CHUNK: Final = 256 * 1024
IO_THREADS: Final = 8  # the file store's own threads (copies and reads in flight at once, each a thread trip)
# Writes are gathered to this size before each trip to a worker thread.
WRITE_CHUNK: Final = 1024 * 1024
TEMP_MARK: Final = ".part-"
# A temporary file untouched this long is the leftover of a crash, not a copy under way in another process.
STALE_TEMP_SECONDS: Final = 3600.0
# S3 multipart: each part buffered in memory, at most this many in flight (5 MiB is S3's smallest part).
S3_PART_BYTES: Final = 5 * 1024 * 1024
S3_PARTS_IN_FLIGHT: Final = 2


def open_assets(settings: Settings) -> AssetStore | None:
    """The store REELAY_ASSETS names (settings checked its form), or None when it is `off`."""
    if settings.assets == "off":
        return None
    if settings.assets.startswith("file://"):
        return FileAssets.open(Path(settings.assets.removeprefix("file://")))
    bucket, _, prefix = settings.assets.removeprefix("s3://").partition("/")
    return S3Assets.open(settings, bucket, prefix.strip("/"))


def _parts(key: str) -> list[str]:
    """A key's path segments, refused if one could leave the store's directory or pass for a temporary file."""
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\0" in part or TEMP_MARK in part:
            raise ValueError(f"not an asset key: {key!r}")
    return parts


class FileAssets:
    """Objects as files under one directory, `<root>/<job_id>/<variant>-<index>`; the directory is made on the
    first put."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # File I/O on threads of its own: fsyncs and large reads never queue ahead of what shares asyncio's default
        # executor (the webhook deliverer's DNS lookups among them).
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="reelay-assets")

    async def _run(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._io, functools.partial(call, *args, **kwargs))

    @classmethod
    def open(cls, root: Path) -> FileAssets:
        """The store at `root` (relative to the working directory), with crash leftovers removed."""
        root = root.absolute()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"REELAY_ASSETS: {root} is not a directory")
        store = cls(root)
        store.remove_stale_temps(time.time() - STALE_TEMP_SECONDS)
        return store

    def remove_stale_temps(self, before: float) -> int:
        """Delete temporary files (of puts that a crash interrupted) last written before `before`."""
        removed = 0
        for temp in self.root.glob(f"*/*{TEMP_MARK}*"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < before:
                    temp.unlink()
                    removed += 1
        return removed

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_parts(key))

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        path = self._path(key)
        temp = path.with_name(f"{path.name}{TEMP_MARK}{secrets.token_hex(8)}")
        await self._run(path.parent.mkdir, parents=True, exist_ok=True)
        file = await self._run(temp.open, "xb")
        size = 0
        try:
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_CHUNK:
                    await self._run(file.writelines, pending)
                    size += pending_size
                    pending, pending_size = [], 0
            await self._run(_finish, file, pending, temp, path)
            size += pending_size
        except BaseException:
            file.close()
            temp.unlink(missing_ok=True)
            raise
        return size

    async def size(self, key: str) -> int | None:
        try:
            stat = await self._run(self._path(key).stat)
        except FileNotFoundError:
            return None
        return stat.st_size

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        # Opened once: a put replacing the object meanwhile does not change what this read returns.
        file = await self._run(self._path(key).open, "rb", buffering=0)
        try:
            position = start
            while end is None or position < end:
                want = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
                chunk = await self._run(os.pread, file.fileno(), want, position)
                if not chunk:
                    break
                position += len(chunk)
                yield chunk
        finally:
            file.close()

    async def delete(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]
        await self._run(_unlink, paths)

    async def delete_job(self, job_id: str) -> None:
        (folder,) = _parts(job_id)
        await self._run(shutil.rmtree, self.root / folder, ignore_errors=True)

    async def close(self) -> None:
        self._io.shutdown(wait=False)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _finish(file: io.BufferedWriter, tail: list[bytes], temp: Path, path: Path) -> None:
    """Write the last bytes, sync them, and move the file into place; then sync the directory, so that a power
    loss cannot leave the name pointing at an empty file."""
    file.writelines(tail)
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class S3Assets:
    """Objects in an S3-compatible bucket under `<prefix>/<job_id>/<variant>-<index>`, through obstore."""

    def __init__(self, store: S3Store) -> None:
        self._store = store

    @classmethod
    def open(cls, settings: Settings, bucket: str, prefix: str) -> S3Assets:
        from obstore.store import S3Store

        config: dict[str, str | bool] = {}
        if settings.s3_endpoint_url:
            config["endpoint"] = settings.s3_endpoint_url
            config["allow_http"] = settings.s3_endpoint_url.startswith("http://")
        for name, value in (
            ("access_key_id", settings.s3_access_key_id),
            ("secret_access_key", settings.s3_secret_access_key),
            ("token", settings.s3_session_token),
            ("region", settings.s3_region),
        ):
            if value:
                config[name] = value
        try:
            store = S3Store(bucket, prefix=prefix or None, config=config)  # type: ignore[arg-type]
        except Exception as exc:
            raise ConfigError(f"REELAY_ASSETS: cannot use {settings.assets}: {exc}".splitlines()[0]) from None
        return cls(store)

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        import obstore

        _parts(key)
        size = 0
        failure: Exception | None = None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size, failure
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    yield chunk
            except Exception as exc:
                failure = exc
                raise

        try:
            await obstore.put_async(
                self._store,
                key,
                counted(),
                attributes={"Content-Type": content_type},
                chunk_size=S3_PART_BYTES,
                max_concurrency=S3_PARTS_IN_FLIGHT,
            )
        except Exception as exc:
            # The caller's error (a download that broke, a size cap) wins over a failure to abort the upload.
            if failure is not None and failure is not exc:
                raise failure from exc
            raise
        return size

    async def size(self, key: str) -> int | None:
        import obstore

        try:
            meta = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        return meta["size"]

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        import obstore

        if end is not None and end <= start:
            return
        if end is None:
            options: dict[str, object] = {"range": {"offset": start}} if start else {}
        else:
            options = {"range": (start, end)}
        try:
            result = await obstore.get_async(self._store, key, options=options)  # type: ignore[arg-type]
        except obstore.exceptions.GenericError:
            # An offset at or past the end: S3 answers 416, which is no bytes here, as on the file backend.
            size = await self.size(key)
            if size is not None and start >= size:
                return
            raise
        async for chunk in result.stream(min_chunk_size=READ_CHUNK):
            yield bytes(chunk)

    async def delete(self, keys: Sequence[str]) -> None:
        import obstore

        for key in keys:
            _parts(key)
        if keys:
            await obstore.delete_async(self._store, list(keys))

    async def delete_job(self, job_id: str) -> None:
        import obstore

        (folder,) = _parts(job_id)
        async for batch in obstore.list(self._store, prefix=f"{folder}/", chunk_size=1000):
            await obstore.delete_async(self._store, [meta["path"] for meta in batch])

    async def close(self) -> None:
        return None
