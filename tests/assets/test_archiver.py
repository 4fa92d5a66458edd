"""The archiver over real HTTP: a succeeded job's outputs are copied from the emulator's expiring URLs into the asset
store, with their sha256, and `job.archived` follows on the event stream; refusals end in `archive_error` with the
job still succeeded; transient failures are retried."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec

from sandbox import SANDBOXES, SandboxKnobs
from sandbox.media import MEDIA, padded_video
from service.assets import AssetStore, asset_key
from service.assets.retention import deleting_assets
from service.timestamps import to_iso
from service.wire import encode_job
from storage import create_store
from tests import pg
from tests.harness import Stack, collect_events, serving, stack, url_of
from tests.ports import bind, free_ports
from tests.processes import REELAY, create_key, reelay_env, reelay_serve, wait_ready
from tests.receivers import Receiver, receiving
from tests.s3 import REGION as S3_REGION
from tests.s3 import S3Server

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


async def test_on_the_s3_backend_an_archived_video_outlives_its_url_and_is_served_by_range_and_signed_url(
    tmp_path: Path, s3_server: S3Server
) -> None:
    async with stack(
        tmp_path,
        knobs=SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3, url_ttl_s=3.0),
        assets=f"s3://{s3_server.bucket()}/assets",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,
        s3_region=S3_REGION,
        webhook_allow_private=True,
    ) as running:
        job = await archived(running, (await running.submit())["id"])
        assert "archive_error" not in job["output"]
        video = next(a for a in job["output"]["assets"] if a["variant"] == "video")
        assert (video["bytes"], video["sha256"]) == (len(VIDEO), sha256(VIDEO))
        async with asyncio.timeout(10):  # the provider's URL expires; the copy in the bucket stays
            while (await running.client.get(job["output"]["videos"][0]["url"])).status_code != 403:
                await asyncio.sleep(0.2)
        content = f"{running.url}/v1/jobs/{job['id']}/content?variant=video&index=0"
        ranged = await running.client.get(content, headers={**running.headers, "Range": "bytes=0-9"})
        assert (ranged.status_code, ranged.content) == (206, VIDEO[:10])
        assert ranged.headers["content-range"] == f"bytes 0-9/{len(VIDEO)}"
        whole = await running.client.get(video["url"])  # the signed URL, with no key
        assert (whole.status_code, whole.content) == (200, VIDEO)
        tampered = await running.client.get(video["url"].replace("variant=video", "variant=thumbnail"))
        assert tampered.status_code == 403


async def test_a_repeated_create_shows_the_archived_assets_with_urls_signed_afresh(tmp_path: Path) -> None:
    async with archiving(tmp_path, asset_url_ttl_seconds=2.0) as running:
        body = {"model": "seedancee2/pro", "input": {"prompt": "waves", "duration": 5}}
        headers = {**running.headers, "Idempotency-Key": "archived-replay"}
        first = await running.client.post(f"{running.url}/v1/jobs", json=body, headers=headers)
        assert first.status_code == 202, first.text
        job = await archived(running, first.json()["id"])
        async with asyncio.timeout(10):  # the URL signed when the job was archived expires
            while (await running.client.get(job["output"]["assets"][0]["url"])).status_code != 403:
                await asyncio.sleep(0.2)
        again = await running.client.post(f"{running.url}/v1/jobs", json=body, headers=headers)
        assert again.status_code == 200, again.text
        shown = await running.client.get(again.json()["output"]["assets"][0]["url"])
        assert (shown.status_code, shown.content) == (200, VIDEO)


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
        metrics = (await running.client.get(f"{running.url}/metrics")).text
        assert 'reelay_assets_archived_total{result="too_large"} 1.0' in metrics
        assert 'reelay_assets_archived_total{result="copied"} 1.0' in metrics
        assert f"reelay_asset_bytes_total {float(len(JPEG))}" in metrics


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


async def test_a_result_sent_compressed_is_refused_and_never_decoded(tmp_path: Path) -> None:
    # Decoded, each 64 KiB read of a gzip body could grow about a thousandfold before the size cap saw it.
    async with archiving(tmp_path, output_gzip=True, output_bytes=8 * 1024 * 1024) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["status"] == "succeeded"
        error = job["output"]["archive_error"]
        assert (error["code"], error["variant"]) == ("content_type", "video")
        assert "gzip" in error["message"]
        assert [a["variant"] for a in job["output"]["assets"]] == ["thumbnail"]
        assert await asset_store(running).size(asset_key(job["id"], "video", 0)) is None


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


async def test_a_copy_still_failing_at_the_deadline_ends_as_unreachable_with_the_last_error(tmp_path: Path) -> None:
    async with archiving(tmp_path, media_burst_5xx=1000, asset_copy_deadline_seconds=1.5) as running:
        job = await archived(running, (await running.submit())["id"])
        assert job["status"] == "succeeded"
        error = job["output"]["archive_error"]
        assert (error["code"], error["variant"]) == ("unreachable", "video")
        assert "503" in error["message"]
        assert job["output"]["assets"] == []


async def test_a_copy_still_running_at_the_deadline_is_cut_off_as_unreachable(tmp_path: Path) -> None:
    # 20 MB at 200 kB/s would take 100 s: the deadline ends it, and frees its slot for other jobs.
    slow = {"output_bytes": 20_000_000, "output_bytes_per_s": 200_000}
    async with archiving(tmp_path, **slow, asset_copy_deadline_seconds=2.0) as running:
        job = await archived(running, (await running.submit())["id"], timeout=15)
        assert job["status"] == "succeeded"
        error = job["output"]["archive_error"]
        assert (error["code"], error["variant"]) == ("unreachable", "video")
        assert await asset_store(running).size(asset_key(job["id"], "video", 0)) is None


async def test_a_cancelled_job_is_never_archived(tmp_path: Path) -> None:
    async with archiving(tmp_path, processing_after_s=5.0, complete_after_s=10.0) as running:
        job = await running.submit()
        await running.accepted(job["id"])
        cancel = await running.client.post(f"{running.url}/v1/jobs/{job['id']}/cancel", headers=running.headers)
        assert cancel.status_code == 200, cancel.text
        assert await running.store.claim_archives(1e12, 10, 60) == []  # nothing queued, now or ever
        assert "job.archived" not in await running.event_types(job["id"])


async def test_a_job_pruned_while_its_copy_runs_leaves_no_files_behind(tmp_path: Path) -> None:
    async with archiving(tmp_path, output_bytes=4_000_000, output_bytes_per_s=2_000_000) as running:
        job_id = (await running.submit())["id"]
        folder = tmp_path / "assets" / job_id
        async with asyncio.timeout(15):  # the video's copy is under way
            while not any(folder.glob("video-0.part-*")):
                await asyncio.sleep(0.05)
        pruned = await running.store.prune(
            to_iso(time.time() + 60), before_jobs_pruned=deleting_assets(asset_store(running))
        )
        assert pruned.jobs == 1
        # The copies end after the prune (the thumbnail's is made): what they wrote goes too.
        async with asyncio.timeout(15):
            while (
                'reelay_assets_archived_total{result="copied"} 1.0'
                not in (await running.client.get(f"{running.url}/metrics")).text
            ):
                await asyncio.sleep(0.05)
            while folder.exists() and any(folder.iterdir()):
                await asyncio.sleep(0.05)


async def archived_over_http(client: httpx.AsyncClient, job_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The job at `job_url` once its output shows `assets`."""
    while True:
        job: dict[str, Any] = (await client.get(job_url, headers=headers)).json()
        if "assets" in (job["output"] or {}):
            return job
        await asyncio.sleep(0.1)


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


async def test_sigkill_in_the_middle_of_a_copy_resumes_after_restart_and_no_partial_file_is_visible(
    tmp_path: Path,
) -> None:
    size = 24 * 1024 * 1024
    slow = {"processing_after_s": 0.1, "complete_after_s": 0.3, "output_bytes": size}
    sandbox_sock, port = bind(), free_ports(1)
    folder = tmp_path / "assets"
    env = reelay_env(
        tmp_path,
        port,
        {"seedancee2": url_of(sandbox_sock)},
        REELAY_ASSETS=f"file://{folder}",
        REELAY_WEBHOOK_ALLOW_PRIVATE="true",
        REELAY_LOG_LEVEL="info",
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {create_key(env)}"}
    log = tmp_path / "reelay.log"
    sandbox = SANDBOXES["seedancee2"].build(SandboxKnobs(**slow, output_bytes_per_s=3_000_000))
    async with serving(sandbox, sandbox_sock), httpx.AsyncClient(timeout=10) as client:
        with reelay_serve(env, log) as first:
            await wait_ready(client, url, first)
            body = {"model": "seedancee2/fast", "input": {"prompt": "shot", "resolution": "480p"}}
            job_id = (await client.post(f"{url}/v1/jobs", headers=headers, json=body)).json()["id"]
            async with asyncio.timeout(20):  # the copy is under way: part of it is written to a temporary file
                while not any(p.stat().st_size > 1_000_000 for p in folder.glob(f"{job_id}/video-0.part-*")):
                    await asyncio.sleep(0.05)
            job = (await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)).json()
            assert job["status"] == "succeeded"
            assert "assets" not in job["output"]
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert not (folder / job_id / "video-0").exists()  # nothing at the asset's name until it is whole

        assert (await client.put(f"{url_of(sandbox_sock)}/_sandbox/knobs", json=slow)).status_code == 200
        with reelay_serve(env, log) as second:
            await wait_ready(client, url, second)
            async with asyncio.timeout(30):
                while (
                    "assets"
                    not in (job := (await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)).json())["output"]
                ):
                    await asyncio.sleep(0.1)
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
    video = next(a for a in job["output"]["assets"] if a["variant"] == "video")
    expected = await padded_sha256(size)
    assert (video["bytes"], video["sha256"]) == (size, expected)
    assert hashlib.sha256((folder / job_id / "video-0").read_bytes()).hexdigest() == expected
    assert "archive.copied" in log.read_text()


async def test_two_replicas_on_postgresql_archive_each_job_exactly_once(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    jobs, first = 8, free_ports(2)
    sandbox_sock = bind()
    sandbox = SANDBOXES["seedancee2"].build(
        SandboxKnobs(processing_after_s=0.1, complete_after_s=0.3, output_bytes=1_000_000, output_bytes_per_s=4e6)
    )
    async with postgres_server.database() as database_url, serving(sandbox, sandbox_sock):
        envs = [
            reelay_env(
                tmp_path,
                port,
                {"seedancee2": url_of(sandbox_sock)},
                REELAY_DATABASE_URL=database_url,
                REELAY_ASSETS=f"file://{tmp_path / 'assets'}",  # one volume both replicas mount
                REELAY_WEBHOOK_ALLOW_PRIVATE="true",
                REELAY_ASSET_CONCURRENCY="2",  # so that neither replica can take every job at once
                REELAY_LOG_LEVEL="info",
            )
            for port in (first, first + 1)
        ]
        subprocess.run([REELAY, "migrate"], env=envs[0], check=True, capture_output=True)
        headers = {"Authorization": f"Bearer {create_key(envs[0])}"}
        logs = [tmp_path / "replica-a.log", tmp_path / "replica-b.log"]
        urls = [f"http://127.0.0.1:{port}" for port in (first, first + 1)]
        async with httpx.AsyncClient(timeout=10) as client:
            with reelay_serve(envs[0], logs[0]) as a, reelay_serve(envs[1], logs[1]) as b:
                await wait_ready(client, urls[0], a)
                await wait_ready(client, urls[1], b)
                body = {"model": "seedancee2/fast", "input": {"prompt": "shot", "resolution": "480p"}}
                job_ids = [
                    (await client.post(f"{urls[i % 2]}/v1/jobs", headers=headers, json=body)).json()["id"]
                    for i in range(jobs)
                ]
                async with asyncio.timeout(60):
                    for job_id in job_ids:
                        await archived_over_http(client, f"{urls[0]}/v1/jobs/{job_id}", headers)
                downloads = (await client.get(f"{url_of(sandbox_sock)}/_sandbox/downloads")).json()["downloads"]
                for process in (a, b):
                    process.send_signal(signal.SIGTERM)
                    assert process.wait(15) == 0
        store = create_store(database_url, encode_job, clock=time.time)
        await store.open()
        try:
            logged = [e for job_id in job_ids for e in await store.events_after(0, job_id=job_id)]
            archived_events = Counter(e.job_id for e in logged if e.type == "job.archived")
        finally:
            await store.close()
    assert archived_events == Counter(dict.fromkeys(job_ids, 1))
    assert len(downloads) == 2 * jobs  # a video and a thumbnail per job
    assert set(downloads.values()) == {1}  # each fetched once, by one replica
    assert all("archive.copied" in log.read_text() for log in logs)  # both replicas took part


async def test_job_archived_is_delivered_to_a_jobs_webhook_url_and_to_an_endpoint_that_asks_for_it(
    tmp_path: Path,
) -> None:
    job_hooks, endpoint_hooks = Receiver.scripted(), Receiver.scripted()
    async with (
        receiving(job_hooks) as job_url,
        receiving(endpoint_hooks) as endpoint_url,
        archiving(tmp_path) as running,
    ):
        created = await running.client.post(
            f"{running.url}/v1/webhook-endpoints",
            headers=running.headers,
            json={"url": f"{endpoint_url}/e", "events": ["job.archived"]},
        )
        assert created.status_code == 201, created.text
        await running.submit()  # a job without a webhook_url: only the endpoint hears of it
        body = {
            "model": "seedancee2/pro",
            "input": {"prompt": "waves", "duration": 5},
            "webhook_url": f"{job_url}/j",
            "webhook_events": ["job.succeeded", "job.archived"],
        }
        response = await running.client.post(f"{running.url}/v1/jobs", json=body, headers=running.headers)
        assert response.status_code == 202, response.text
        job = response.json()
        got = await job_hooks.wait_for(2, timeout=15)
        await endpoint_hooks.wait_for(2, timeout=15)  # one per job: the first submit's and this one's
    assert [msgspec.json.decode(g.body)["type"] for g in got] == ["job.succeeded", "job.archived"]
    assert [a["variant"] for a in got[1].data["job"]["output"]["assets"]] == ["video", "thumbnail"]
    endpoint_types = {msgspec.json.decode(g.body)["type"] for g in endpoint_hooks.got}
    assert endpoint_types == {"job.archived"}
    assert job["id"] in {g.data["job"]["id"] for g in endpoint_hooks.got}
