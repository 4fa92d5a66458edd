"""The archiver over real HTTP: a succeeded job's outputs are copied from the emulator's expiring URLs into the asset
store, with their sha256, and `job.archived` follows on the event stream; refusals end in `archive_error` with the
job still succeeded; transient failures are retried."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from sandbox import SandboxKnobs
from sandbox.media import MEDIA, padded_video
from service.assets import AssetStore, asset_key
from tests.harness import Stack, collect_events, stack

VIDEO, JPEG = MEDIA[".mp4"][0], MEDIA[".jpg"][0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@asynccontextmanager
async def archiving(tmp_path: Path, **knobs: Any) -> AsyncIterator[Stack]:
    """Reelay with a file asset store, archiving from a Seedancee2 emulator on loopback (allowed here)."""
    overrides = {name: knobs.pop(name) for name in list(knobs) if name.startswith("asset_")}
    async with stack(
        tmp_path,
        knobs=SandboxKnobs(**{"processing_after_s": 0.1, "complete_after_s": 0.3, **knobs}),
        assets=f"file://{tmp_path / 'assets'}",
        webhook_allow_private=overrides.pop("asset_allow_private", True),
        **overrides,
    ) as running:
        yield running


def asset_store(running: Stack) -> AssetStore:
    store: AssetStore | None = running.app.state.ctx.asset_store
    assert store is not None
    return store


async def stored(running: Stack, job_id: str, variant: str) -> bytes:
    return b"".join([chunk async for chunk in asset_store(running).read(asset_key(job_id, variant, 0))])


async def archived(running: Stack, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The job once `job.archived` is logged for it."""
    async with asyncio.timeout(timeout):
        while "job.archived" not in await running.event_types(job_id):
            await asyncio.sleep(0.05)
    return await running.job(job_id)


async def test_video_and_thumbnail_are_archived_with_the_served_sha256_and_job_archived_arrives_on_sse(
    tmp_path: Path,
) -> None:
    async with archiving(tmp_path, url_ttl_s=3.0) as running:
        events: list[dict[str, Any]] = []
        connected = asyncio.Event()
        reading = asyncio.create_task(
            collect_events(running, f"{running.url}/v1/events", "job.archived", events, connected)
        )
        await connected.wait()
        job = await running.submit()
        async with asyncio.timeout(15):
            await reading
        assert [e["type"] for e in events if e["job"]["id"] == job["id"]][-2:] == ["job.succeeded", "job.archived"]
        output = events[-1]["job"]["output"]
        assert "archive_error" not in output
        assets = {a["variant"]: a for a in output["assets"]}
        assert assets["video"] | {"url": None} == {
            "variant": "video",
            "index": 0,
            "url": None,
            "bytes": len(VIDEO),
            "content_type": "video/mp4",
            "sha256": sha256(VIDEO),
        }
        assert (assets["thumbnail"]["sha256"], assets["thumbnail"]["content_type"]) == (sha256(JPEG), "image/jpeg")
        assert events[-1]["job"]["status"] == "succeeded"

        # The provider's URL expires; the copy stays, in the store and behind the job's own content URL.
        provider_url = output["videos"][0]["url"]
        async with asyncio.timeout(10):
            while (await running.client.get(provider_url)).status_code != 403:
                await asyncio.sleep(0.2)
        assert await stored(running, job["id"], "video") == VIDEO
        content = await running.client.get(
            f"{running.url}/v1/jobs/{job['id']}/content?variant=video&index=0", headers=running.headers
        )
        assert content.status_code == 200
        assert content.content == VIDEO
        shown = await running.job(job["id"])
        assert shown["status"] == "succeeded"
        assert len(shown["output"]["assets"]) == 2


async def test_an_output_over_the_size_cap_ends_in_archive_error_and_the_job_stays_succeeded(tmp_path: Path) -> None:
    async with archiving(tmp_path, output_bytes=300_000, asset_max_bytes=100_000) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["status"] == "succeeded"
        assert job["output"]["archive_error"] | {"message": None} == {
            "code": "too_large",
            "message": None,
            "variant": "video",
            "index": 0,
        }
        assert [a["variant"] for a in job["output"]["assets"]] == ["thumbnail"]  # the thumbnail fits
        assert await asset_store(running).size(asset_key(job["id"], "video", 0)) is None


async def test_an_output_without_content_length_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    async with archiving(tmp_path, output_bytes=300_000, output_unsized=True, asset_max_bytes=100_000) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["output"]["archive_error"]["code"] == "too_large"
        assert await asset_store(running).size(asset_key(job["id"], "video", 0)) is None  # nothing partial kept


async def test_a_disallowed_content_type_ends_in_archive_error_and_the_job_stays_succeeded(tmp_path: Path) -> None:
    async with archiving(tmp_path, output_content_type="text/html") as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["status"] == "succeeded"
        assert (job["output"]["archive_error"]["code"], job["output"]["archive_error"]["variant"]) == (
            "content_type",
            "video",
        )
        assert "text/html" in job["output"]["archive_error"]["message"]
        assert [a["variant"] for a in job["output"]["assets"]] == ["thumbnail"]


async def test_an_expired_provider_url_is_final_as_expired(tmp_path: Path) -> None:
    async with archiving(tmp_path, url_ttl_s=0.0) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["output"]["archive_error"]["code"] == "expired"
        assert "403" in job["output"]["archive_error"]["message"]
        assert job["output"]["assets"] == []


async def test_a_result_url_on_a_private_address_is_refused_by_the_guard(tmp_path: Path) -> None:
    async with archiving(tmp_path, asset_allow_private=False) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["output"]["archive_error"]["code"] == "private_address"
        downloads = await running.sandbox("seedancee2", "GET", "/_sandbox/downloads")
        assert downloads == {"downloads": {}}  # never connected


async def test_a_5xx_from_the_provider_is_retried_and_the_copy_then_succeeds(tmp_path: Path) -> None:
    async with archiving(tmp_path, media_burst_5xx=1) as running:
        job = await archived(running, (await running.submit())["id"], timeout=20)
        assert "archive_error" not in job["output"]
        assert {a["variant"]: a["sha256"] for a in job["output"]["assets"]} == {
            "video": sha256(VIDEO),
            "thumbnail": sha256(JPEG),
        }
        downloads = (await running.sandbox("seedancee2", "GET", "/_sandbox/downloads"))["downloads"]
        # The video's first try got the 503 (not counted as a download); each file was then fetched once.
        assert sorted(downloads.values()) == [1, 1]


async def test_a_cancelled_job_is_never_archived(tmp_path: Path) -> None:
    async with archiving(tmp_path, processing_after_s=5.0, complete_after_s=10.0) as running:
        job = await running.submit()
        await running.accepted(job["id"])
        cancel = await running.client.post(f"{running.url}/v1/jobs/{job['id']}/cancel", headers=running.headers)
        assert cancel.status_code == 200, cancel.text
        assert await running.store.claim_archives(1e12, 10, 60) == []  # nothing queued, now or ever
        assert "job.archived" not in await running.event_types(job["id"])


async def padded_sha256(size: int) -> str:
    """The sha256 of the emulator's video padded to `size` bytes, computed as it is served."""
    total, body = padded_video(size)
    assert total == size
    assert not isinstance(body, bytes)
    digest = hashlib.sha256()
    async for chunk in body:
        digest.update(chunk)
    return digest.hexdigest()


async def test_a_large_output_is_streamed_into_the_store(tmp_path: Path) -> None:
    size = 20 * 1024 * 1024
    async with archiving(tmp_path, output_bytes=size) as running:
        job = await archived(running, (await running.submit())["id"], timeout=30)
        video = next(a for a in job["output"]["assets"] if a["variant"] == "video")
        assert (video["bytes"], video["sha256"]) == (size, await padded_sha256(size))
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{running.url}/v1/jobs/{job['id']}/content?variant=video&index=0",
                headers={**running.headers, "Range": f"bytes={size - 10}-"},
            )
        assert response.status_code == 206
        assert response.content == bytes(10)
