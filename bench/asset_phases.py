"""Phases j and j2: a large output copied into the asset store, and served back out with Range.

- j. Copy: a job on the Seedancee2 emulator (in a process of its own) whose video is 200 MB, archived by
  `reelay serve` (the archiver, production defaults, file store on the same disk): MB/s from the job's
  `job.succeeded` to its `job.archived` as the server logged them, beside a plain httpx streaming download of the
  same result URL to a file, in a fresh process, in the same run (target >= 0.8 x), and the server's RSS growth
  over its level before the job, sampled every 5 ms (target <= 32 MB).
- j2. Serve: the 200 MB file archived for a job, read by 50 concurrent clients, each asking its own 1/50th of the
  file with one `Range` request per round, through `reelay serve` (`GET /v1/jobs/{id}/content`, an API key) and
  from a static file server in the same run (target >= 0.5 x of it).

j2's static server is aiohttp's `FileResponse` (sendfile, Range) in a process of its own: `python -m http.server`,
which the issue suggests, ignores `Range` (Python 3.11 answers every request with the whole file), so it could
not serve j2's reads.

`python -m bench.asset_phases static|download|emulator ...` are the child processes (see `_main`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from bench.common import BIN, CpuMeter, Process, rss_bytes, say, spawn
from bench.target import JOB_BODY, MODEL, Database, reelay, reelay_env
from service.assets import asset_key
from service.ids import new_job_id, new_token
from service.lifecycle import new_job
from service.timestamps import to_iso
from service.wire import encode_job
from storage import JobRecord, Stage, create_store
from storage.base import Decision
from tests.ports import free_ports

MB = 1_000_000
READERS = 50  # concurrent Range reads in j2
ROUNDS = 4  # each reader reads its span this many times
CHUNK = 1024 * 1024
RSS_SAMPLE_SECONDS = 0.005
ARCHIVE_TIMEOUT = 300.0  # from the job's creation to its assets


def make_output(path: Path, size: int) -> None:
    """`size` bytes of incompressible data (the copy and the download hash or write every byte of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        for start in range(0, size, CHUNK):
            out.write(block[: min(CHUNK, size - start)])


@contextmanager
def static_server(root: Path, log: Path) -> Iterator[Process]:
    port = free_ports(1)
    command = [str(BIN / "python"), "-m", "bench.asset_phases", "static", str(root), str(port)]
    with spawn(command, dict(os.environ), log, port) as process:
        yield process


def child(*args: str) -> dict[str, Any]:
    """One measured copy or download in a fresh process; its JSON report."""
    done = subprocess.run(
        [str(BIN / "python"), "-m", "bench.asset_phases", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.asset_phases {args[0]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- j: copy ---------------------------------------------------------------------------------------


def copy(work: Path, size: int) -> dict[str, Any]:
    database = Database(f"sqlite:///{work / 'assets-copy.db'}")
    (key,) = asyncio.run(database.keys(1))
    say(f"j: the archiver copies a {size / MB:,.0f} MB output, then a plain download of it")
    port = free_ports(2)
    emulator_port = port + 1
    command = [str(BIN / "python"), "-m", "bench.asset_phases", "emulator", str(emulator_port), str(size)]
    with spawn(command, dict(os.environ), work / "asset-emulator.log", emulator_port) as emulator:
        env = reelay_env(
            database.url,
            port,
            emulator.url,
            REELAY_ASSETS=f"file://{work / 'asset-copies'}",
            REELAY_WEBHOOK_ALLOW_PRIVATE="true",  # the emulator's result URLs are on loopback
        )
        with reelay(env, work / "asset-copy-reelay.log") as server:
            archived = asyncio.run(_archived_by_reelay(server, key.secret, database.url))
        download = child("download", archived["source_url"], str(work / "asset-download.bin"))
    (work / "asset-download.bin").unlink(missing_ok=True)
    if archived["bytes"] != size or download["bytes"] != size:
        raise RuntimeError(f"copied {archived['bytes']} and downloaded {download['bytes']} bytes of {size}")
    result = {
        "bytes": size,
        "download_mb_s": round(size / MB / download["seconds"], 1),
        "copy_mb_s": round(size / MB / archived["seconds"], 1),
        "copy_rss_growth_mb": round(archived["rss_growth"] / MB, 1),
        "download_rss_growth_mb": round(download["rss_growth"] / MB, 1),
        "server_cpu_pct": archived["server_cpu_pct"],
    }
    result["copy_vs_download"] = round(result["copy_mb_s"] / result["download_mb_s"], 2)
    say(f"   {result}")
    return result


async def _archived_by_reelay(server: Process, api_key: str, database_url: str) -> dict[str, Any]:
    """Create a job, let it succeed and be archived; the copy's seconds (from the job's `job.succeeded` to its
    `job.archived`, as the server logged them) and the server's RSS growth over its level before the job."""
    import httpx

    from service.timestamps import from_iso

    pid = server.pid
    start_rss = peak = rss_bytes(pid)
    auth = {"Authorization": f"Bearer {api_key}"}
    meter = CpuMeter(pid)
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=30) as client:
        created = await client.post("/v1/jobs", content=JOB_BODY, headers={"Content-Type": "application/json"})
        created.raise_for_status()
        job_id = created.json()["id"]
        deadline = time.monotonic() + ARCHIVE_TIMEOUT
        while True:
            peak = max(peak, rss_bytes(pid))
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            output = job["output"] or {}
            if "archive_error" in output:
                raise RuntimeError(f"the copy failed: {output['archive_error']}")
            if output.get("assets"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not archived within {ARCHIVE_TIMEOUT:g} s")
            await asyncio.sleep(RSS_SAMPLE_SECONDS)
    cpu = meter.read()
    store = create_store(database_url, encode_job, clock=time.time, sqlite_synchronous="NORMAL")
    await store.open()
    try:
        logged = {event.type: event.created_at for event in await store.events_after(0, job_id=job_id)}
    finally:
        await store.close()
    seconds = (from_iso(logged["job.archived"]) - from_iso(logged["job.succeeded"])).total_seconds()
    video = next(a for a in output["assets"] if a["variant"] == "video")
    return {
        "seconds": seconds,
        "bytes": video["bytes"],
        "rss_growth": max(0, peak - start_rss),
        "source_url": output["videos"][0]["url"],
        "server_cpu_pct": cpu.get("server_cpu_pct"),
    }


async def _sampled(work: AsyncIterator[int]) -> dict[str, Any]:
    """Run a transfer, sampling this process's RSS; its seconds, bytes and RSS growth over the start."""
    pid = os.getpid()
    start_rss = peak = rss_bytes(pid)
    running = True

    async def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    total = 0
    async for moved in work:
        total += moved
    seconds = time.perf_counter() - started
    running = False
    await sampler
    return {"seconds": seconds, "bytes": total, "rss_growth": max(0, max(peak, rss_bytes(pid)) - start_rss)}


async def _download(url: str, target: str) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=60) as client:

        async def run() -> AsyncIterator[int]:
            async with client.stream("GET", url) as response:
                response.raise_for_status()
                with open(target, "wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)  # as a plain download does: the page cache takes it
                        yield len(chunk)

        return await _sampled(run())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# -- j2: serve -------------------------------------------------------------------------------------


async def seed_archived_job(database_url: str, api_key_id: str, assets: Path, source: Path) -> str:
    """A succeeded job whose output names `source` as its archived video (hard-linked into the store)."""
    store = create_store(database_url, encode_job, clock=time.time, sqlite_synchronous="NORMAL")
    await store.open()
    try:
        now = time.time()
        job = new_job(
            job_id=new_job_id(),
            api_key_id=api_key_id,
            model=MODEL,
            provider="seedancee2",
            input={"prompt": "bench", "duration": 5},
            metadata={},
            cost={},
            callback_token=new_token(),
            now=now,
            timeout=86_400,
        )
        await store.create_job(job, "job.created")
        size = source.stat().st_size
        asset = {"variant": "video", "index": 0, "url": "", "bytes": size, "content_type": "video/mp4"}
        asset["sha256"] = _sha256(source)
        output = {"videos": [{"url": "https://provider.example/v.mp4", "thumbnail_url": None}], "last_frame_url": None}

        def succeed(current: JobRecord) -> Decision:
            done = msgspec.structs.replace(
                current,
                status="succeeded",
                stage=Stage.TERMINAL,
                completed_at=to_iso(now),
                output={**output, "assets": [asset]},
            )
            return done, "job.succeeded"

        await store.update_job(job.id, succeed)
    finally:
        await store.close()
    target = assets / asset_key(job.id, "video", 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)
    return job.id


async def range_reads(url: str, headers: dict[str, str], size: int, readers: int, rounds: int) -> dict[str, Any]:
    """`readers` clients at once, each reading its own 1/`readers` of the file with one Range request a round."""
    import aiohttp

    span = size // readers
    connector = aiohttp.TCPConnector(limit=readers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def reader(index: int) -> int:
            first, last = index * span, (index + 1) * span - 1
            got = 0
            for _ in range(rounds):
                range_headers = {**headers, "Range": f"bytes={first}-{last}"}
                async with session.get(url, headers=range_headers) as response:
                    if response.status != 206:
                        raise RuntimeError(f"{url}: {response.status} to a Range request")
                    async for chunk in response.content.iter_chunked(CHUNK):
                        got += len(chunk)
            if got != rounds * span:
                raise RuntimeError(f"{url}: {got} bytes read of {rounds * span}")
            return got

        started = time.perf_counter()
        total = sum(await asyncio.gather(*(reader(i) for i in range(readers))))
        seconds = time.perf_counter() - started
    return {"mb_s": round(total / MB / seconds, 1), "bytes": total, "seconds": round(seconds, 2)}


def serve(work: Path, size: int, readers: int = READERS, rounds: int = ROUNDS) -> dict[str, Any]:
    source = work / "asset-source" / "output.mp4"
    if not source.exists() or source.stat().st_size != size:
        make_output(source, size)
    database = Database(f"sqlite:///{work / 'assets.db'}")
    (key,) = asyncio.run(database.keys(1))
    assets = work / "served-assets"
    job_id = asyncio.run(seed_archived_job(database.url, key.id, assets, source))
    say(f"j2: {readers} concurrent Range reads of a {size / MB:,.0f} MB asset, {rounds} rounds")
    port = free_ports(1)
    env = reelay_env(database.url, port, REELAY_ASSETS=f"file://{assets}")
    with reelay(env, work / "asset-reelay.log") as server:
        meter = CpuMeter(server.pid)
        content = f"{server.url}/v1/jobs/{job_id}/content?variant=video&index=0"
        auth = {"Authorization": f"Bearer {key.secret}"}
        through_reelay = asyncio.run(range_reads(content, auth, size, readers, rounds))
        cpu = meter.read()
    with static_server(source.parent, work / "asset-static-j2.log") as static:
        from_static = asyncio.run(range_reads(f"{static.url}/{source.name}", {}, size, readers, rounds))
    result = {
        "bytes": size,
        "readers": readers,
        "rounds": rounds,
        "reelay_mb_s": through_reelay["mb_s"],
        "static_mb_s": from_static["mb_s"],
        "reelay_vs_static": round(through_reelay["mb_s"] / from_static["mb_s"], 2),
        **cpu,
    }
    say(f"   {result}")
    return result


# -- child processes ---------------------------------------------------------------------------------


def _static(root: Path, port: int) -> None:
    from aiohttp import web

    async def file(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, chunk_size=CHUNK)

    app = web.Application()
    app.router.add_get("/{name}", file)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _emulator(port: int, size: int) -> None:
    """The Seedancee2 emulator, its tasks done in half a second, each video `size` bytes at its result URL."""
    from sandbox import SANDBOXES, SandboxKnobs
    from service.server import listen, make_server, run, serve_all

    app = SANDBOXES["seedancee2"].build(SandboxKnobs(processing_after_s=0.2, complete_after_s=0.5, output_bytes=size))
    run(serve_all([make_server(app, listen("127.0.0.1", port))]))


def _main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "static":
        _static(Path(args[0]), int(args[1]))
    elif mode == "download":
        print(json.dumps(asyncio.run(_download(args[0], args[1]))))
    elif mode == "emulator":
        _emulator(int(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
