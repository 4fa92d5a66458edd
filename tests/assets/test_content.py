"""`GET /v1/jobs/{id}/content` over real HTTP: Range, ETag, signed URLs, who may read, and what prune leaves."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec
import pytest

from service.assets import AssetStore, AssetUrls, asset_key
from service.assets.retention import deleting_assets, expire_assets
from service.keys import create_key
from service.timestamps import to_iso
from storage import JobRecord
from storage.base import Decision
from tests.harness import Stack, stack

DATA = os.urandom(300_000)  # more than one read chunk of the file store


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack(tmp_path, assets=f"file://{tmp_path / 'assets'}") as started:
        yield started


def asset_store(stack_: Stack) -> AssetStore:
    store: AssetStore | None = stack_.app.state.ctx.asset_store
    assert store is not None
    return store


async def archived_job(stack_: Stack, data: bytes = DATA, variant: str = "video", index: int = 0) -> str:
    """A succeeded job whose output names `data` as its archived asset, put into the store as the archiver would."""
    job = await stack_.submit()
    await stack_.wait_for(job["id"], {"succeeded"})
    async with asyncio.timeout(15):  # the archiver's own copy of the emulator's output first: it cannot replace ours
        while "assets" not in ((await stack_.job(job["id"]))["output"] or {}):
            await asyncio.sleep(0.05)

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await asset_store(stack_).put(asset_key(job["id"], variant, index), chunks(), content_type="video/mp4")
    asset = {
        "variant": variant,
        "index": index,
        "url": "signed-when-archived",
        "bytes": len(data),
        "content_type": "video/mp4",
        "sha256": hashlib.sha256(data).hexdigest(),
    }

    def add_asset(current: JobRecord) -> Decision:
        output = dict(current.output or {})
        output["assets"] = [asset]
        return msgspec.structs.replace(current, output=output), None

    await stack_.store.update_job(job["id"], add_asset)
    return str(job["id"])


def content_url(stack_: Stack, job_id: str, **query: Any) -> str:
    return f"{stack_.url}/v1/jobs/{job_id}/content?{urlencode({'variant': 'video', 'index': 0, **query})}"


async def signed_url(stack_: Stack, job_id: str) -> str:
    """The asset's `url` as GET /v1/jobs/{id} shows it."""
    url: str = (await stack_.job(job_id))["output"]["assets"][0]["url"]
    return url


async def test_range_of_the_first_ten_bytes_answers_206_with_them(running: Stack) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id), headers={**running.headers, "Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.content == DATA[:10]
    assert response.headers["content-range"] == f"bytes 0-9/{len(DATA)}"
    assert response.headers["content-length"] == "10"
    assert response.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=299990-", 299_990, 300_000), ("bytes=-25", 299_975, 300_000), ("bytes=299999-400000", 299_999, 300_000)],
)
async def test_open_suffix_and_overlong_ranges_answer_206_with_the_bytes_that_exist(
    running: Stack, header: str, start: int, end: int
) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id), headers={**running.headers, "Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


async def test_whole_asset_answers_200_with_its_etag_length_and_cache_headers(running: Stack) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id), headers=running.headers)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"].startswith("private")
    again = await running.client.get(
        content_url(running, job_id), headers={**running.headers, "If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize("header", ["bytes=0-9,20-29", "bytes=9-0", "items=0-9", "bytes=abc"])
async def test_several_or_malformed_ranges_get_the_whole_asset(running: Stack, header: str) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id), headers={**running.headers, "Range": header})
    assert response.status_code == 200
    assert response.content == DATA


@pytest.mark.parametrize("header", ["bytes=300000-", "bytes=400000-400010", "bytes=-0"])
async def test_unsatisfiable_range_answers_416_naming_the_size(running: Stack, header: str) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id), headers={**running.headers, "Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


async def test_head_answers_the_headers_without_the_body(running: Stack) -> None:
    job_id = await archived_job(running)
    response = await running.client.head(content_url(running, job_id), headers=running.headers)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(DATA))
    assert response.content == b""


async def test_signed_url_works_without_a_key(running: Stack) -> None:
    job_id = await archived_job(running)
    url = await signed_url(running, job_id)
    assert url.startswith(f"{running.url}/v1/jobs/{job_id}/content?")
    response = await running.client.get(url, headers={"Range": "bytes=0-9"})
    assert response.status_code == 206
    assert response.content == DATA[:10]
    listed = await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)
    assert (await running.client.get(listed.json()["data"][0]["output"]["assets"][0]["url"])).content == DATA


async def test_shown_urls_are_signed_afresh_each_time_the_job_is_read(running: Stack) -> None:
    job_id = await archived_job(running)
    urls: AssetUrls = running.app.state.ctx.asset_urls
    expires = int(parse_qs(urlsplit(await signed_url(running, job_id)).query)["expires"][0])
    assert time.time() + urls.ttl_seconds - 5 <= expires <= time.time() + urls.ttl_seconds + 1


async def test_tampered_signatures_answer_403_invalid_signature(running: Stack) -> None:
    job_id = await archived_job(running)
    query = {k: v[0] for k, v in parse_qs(urlsplit(await signed_url(running, job_id)).query).items()}
    sig = query["sig"]
    tampered = [
        {**query, "sig": ("A" if sig[0] != "A" else "B") + sig[1:]},
        {**query, "expires": str(int(query["expires"]) + 3600)},
        {**query, "variant": "thumbnail"},
        {k: v for k, v in query.items() if k != "expires"},
    ]
    for changed in tampered:
        response = await running.client.get(f"{running.url}/v1/jobs/{job_id}/content?{urlencode(changed)}")
        assert response.status_code == 403, changed
        assert response.json()["error"]["code"] == "invalid_signature"


async def test_expired_signed_url_answers_403_url_expired(running: Stack) -> None:
    job_id = await archived_job(running)
    urls: AssetUrls = running.app.state.ctx.asset_urls
    old = urls.url(job_id, "video", 0, now=time.time() - urls.ttl_seconds - 60)
    response = await running.client.get(old)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_expired"


async def test_without_a_key_or_a_signature_answers_401(running: Stack) -> None:
    job_id = await archived_job(running)
    response = await running.client.get(content_url(running, job_id))
    assert response.status_code == 401
    # A signature opens this route only: the job itself still needs the key.
    query = urlsplit(await signed_url(running, job_id)).query
    assert (await running.client.get(f"{running.url}/v1/jobs/{job_id}?{query}")).status_code == 401


async def test_another_keys_job_answers_404(running: Stack) -> None:
    job_id = await archived_job(running)
    _, other = await create_key(running.store, "other", now=time.time())
    response = await running.client.get(content_url(running, job_id), headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_an_asset_the_job_does_not_name_answers_404(running: Stack) -> None:
    job_id = await archived_job(running)
    for query in ({"index": 1}, {"variant": "thumbnail"}):
        response = await running.client.get(content_url(running, job_id, **query), headers=running.headers)
        assert response.status_code == 404
    bad = await running.client.get(content_url(running, job_id, variant="poster"), headers=running.headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["allowed"] == ["video", "thumbnail", "last_frame"]
    negative = await running.client.get(content_url(running, job_id, index=-1), headers=running.headers)
    assert negative.status_code == 400


async def test_assets_off_answers_404_saying_so(tmp_path: Path) -> None:
    async with stack(tmp_path, assets="off") as running:
        job = await running.submit()
        await running.wait_for(job["id"], {"succeeded"})
        response = await running.client.get(content_url(running, job["id"]), headers=running.headers)
        assert response.status_code == 404
        assert "REELAY_ASSETS=off" in response.json()["error"]["message"]


async def test_prune_removes_the_files_of_the_jobs_it_removes(running: Stack, tmp_path: Path) -> None:
    job_id = await archived_job(running)
    assert (tmp_path / "assets" / job_id).is_dir()
    counts = await running.store.prune(
        to_iso(time.time() + 60), before_jobs_pruned=deleting_assets(asset_store(running))
    )
    assert counts.jobs == 1
    assert not (tmp_path / "assets" / job_id).exists()
    assert await running.store.get_job(job_id) is None


async def test_asset_retention_deletes_the_files_keeps_the_job_and_answers_410(running: Stack, tmp_path: Path) -> None:
    job_id = await archived_job(running)
    events = await running.event_types(job_id)
    at = to_iso(time.time())
    expired = await expire_assets(running.store, asset_store(running), to_iso(time.time() + 60), at=at)
    assert expired == 1
    assert not (tmp_path / "assets" / job_id).exists()
    job = await running.job(job_id)
    assert job["output"]["assets_expired_at"] == at
    assert await running.event_types(job_id) == events  # marked without an event
    response = await running.client.get(content_url(running, job_id), headers=running.headers)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "asset_expired"
    assert await expire_assets(running.store, asset_store(running), to_iso(time.time() + 60), at=at) == 0


async def test_signed_urls_stay_valid_across_a_restart_on_the_same_database(tmp_path: Path) -> None:
    async with stack(tmp_path, assets=f"file://{tmp_path / 'assets'}") as first:
        job_id = await archived_job(first)
        url = await signed_url(first, job_id)
    # The secret was made once and kept in the database: the next process signs and checks with the same one.
    async with stack(tmp_path, assets=f"file://{tmp_path / 'assets'}") as second:
        response = await second.client.get(url.replace(first.url, second.url))
        assert response.status_code == 200
        assert response.content == DATA


async def test_reelay_asset_url_secret_signs_the_urls(tmp_path: Path) -> None:
    secret = "a-secret-of-32-characters-long!!"
    async with stack(tmp_path, assets=f"file://{tmp_path / 'assets'}", asset_url_secret=secret) as running:
        job_id = await archived_job(running)
        query = parse_qs(urlsplit(await signed_url(running, job_id)).query)
        expires, sig = int(query["expires"][0]), query["sig"][0]
        ours = AssetUrls(secret.encode(), running.url, 60)
        assert ours.valid(job_id, "video", 0, expires, sig, now=time.time())
