"""`python -m bench.asset_clients [--mb 200]`: the asset store's candidate clients, uploading then downloading one
object, in MB/s, with the process's peak RSS growth; prints only.

Local disk: Reelay's FileAssets (temp file, fsync, rename), obstore's LocalStore, and plain blocking file I/O as the
disk's ceiling. S3 (moto's server on loopback, tests/s3.py): Reelay's S3Assets (obstore's S3Store) and aiobotocore
(`pip install aiobotocore`) doing the same multipart upload and streamed GET by hand. Every client writes the same
chunks (64 KiB, as a download hands them over) and reads in 256 KiB chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import ROOT
from service.assets.store import READ_CHUNK, S3_PART_BYTES, S3_PARTS_IN_FLIGHT, FileAssets, open_assets
from service.providers import ADAPTERS
from service.settings import Settings
from tests.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, s3_server

MiB = 1024 * 1024
WRITE = 64 * 1024
KEY = "bench/video-0"


def peak_reset() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return peak()


def peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def chunks(total: int) -> AsyncIterator[bytes]:
    block = os.urandom(MiB)
    for offset in range(0, total, WRITE):
        yield block[offset % MiB : offset % MiB + WRITE]


async def measure(name: str, total: int, put: Callable[[], Awaitable[Any]], get: Callable[[], Awaitable[int]]) -> None:
    base = peak_reset()
    started = time.perf_counter()
    await put()
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    got = await get()
    read = time.perf_counter() - started
    assert got == total, (name, got, total)
    print(
        f"{name:<34} put {total / MiB / wrote:7.0f} MB/s   get {total / MiB / read:7.0f} MB/s   "
        f"peak RSS +{(peak() - base) / MiB:5.1f} MiB",
        flush=True,
    )


async def drain(stream: AsyncIterator[Any]) -> int:
    return sum([len(chunk) async for chunk in stream])


async def local(total: int, folder: Path) -> None:
    import obstore
    from obstore.store import LocalStore

    files = FileAssets.open(folder / "reelay")
    await measure(
        "local: Reelay FileAssets",
        total,
        lambda: files.put(KEY, chunks(total), content_type="video/mp4"),
        lambda: drain(files.read(KEY)),
    )

    store = LocalStore(folder / "obstore", mkdir=True)

    async def obstore_get() -> int:
        result = await obstore.get_async(store, KEY)
        return await drain(result.stream(min_chunk_size=READ_CHUNK))

    await measure(
        "local: obstore LocalStore",
        total,
        lambda: obstore.put_async(store, KEY, chunks(total), chunk_size=S3_PART_BYTES, max_concurrency=2),
        obstore_get,
    )

    plain = folder / "plain"

    async def plain_put() -> None:
        with plain.open("wb") as file:
            async for chunk in chunks(total):
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())

    async def plain_get() -> int:
        size = 0
        with plain.open("rb", buffering=0) as file:
            while chunk := file.read(READ_CHUNK):
                size += len(chunk)
        return size

    await measure("local: blocking file I/O (ceiling)", total, plain_put, plain_get)


async def s3(total: int, server: S3Server) -> None:
    bucket = server.bucket()
    store = open_assets(Settings.from_env(server.environ(bucket), adapters=ADAPTERS))
    assert store is not None
    await measure(
        "s3 (moto): Reelay S3Assets (obstore)",
        total,
        lambda: store.put(KEY, chunks(total), content_type="video/mp4"),
        lambda: drain(store.read(KEY)),
    )
    try:
        from aiobotocore.session import get_session
    except ImportError:
        print("s3 (moto): aiobotocore not installed (pip install aiobotocore); skipped")
        return
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    ) as client:
        key = f"assets/{KEY}-botocore"

        async def put() -> None:
            upload = await client.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/mp4")
            parts: list[dict[str, Any]] = []
            in_flight: set[asyncio.Task[None]] = set()

            async def send(number: int, body: bytes) -> None:
                sent = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=body
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})

            pending = bytearray()
            number = 0
            async for chunk in chunks(total):
                pending += chunk
                if len(pending) >= S3_PART_BYTES:
                    number += 1
                    in_flight.add(asyncio.create_task(send(number, bytes(pending))))
                    pending.clear()
                    if len(in_flight) >= S3_PARTS_IN_FLIGHT:
                        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                        for task in done:
                            task.result()
            if pending:
                number += 1
                in_flight.add(asyncio.create_task(send(number, bytes(pending))))
            await asyncio.gather(*in_flight)
            parts.sort(key=lambda part: part["PartNumber"])
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
            )

        async def get() -> int:
            answer = await client.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as body:
                return await drain(body.iter_chunks(READ_CHUNK))

        await measure("s3 (moto): aiobotocore", total, put, get)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="object size in MiB")
    args = parser.parse_args()
    total = args.mb * MiB
    (ROOT / "var").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-assets-", dir=ROOT / "var"))
    try:
        await local(total, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with s3_server() as server:
        await s3(total, server)


if __name__ == "__main__":
    asyncio.run(main())
