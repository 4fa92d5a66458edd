"""The emulators' result files, over real HTTP: real MP4 and JPEG bytes at signed URLs that expire like a cloud
bucket's, and the knobs that make a result large, slow, of another type, or failing for a while."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import httpx
import pytest

from sandbox.media import MEDIA, padded_video
from tests.sandbox.test_knobs import PROVIDERS, Provider, emulator


@pytest.fixture(params=PROVIDERS, ids=lambda p: p.name)
def provider(request: pytest.FixtureRequest) -> Provider:
    assert isinstance(request.param, Provider)
    return request.param


def _links(found: Any) -> list[str]:
    """Every result URL in an answer, wherever the provider puts it."""
    if isinstance(found, dict):
        return [url for value in found.values() for url in _links(value)]
    if isinstance(found, list):
        return [url for value in found for url in _links(value)]
    return [found] if isinstance(found, str) and "/_media/" in found else []


async def _completed(client: httpx.AsyncClient, provider: Provider) -> list[str]:
    """Create a task, force it to succeed, and return its result URLs (videos first)."""
    created = await client.post(provider.create_path, headers=provider.auth, json=provider.create_body)
    assert created.status_code == 200, created.text
    task = (await client.get("/_sandbox/tasks")).json()["tasks"][0]
    forced = await client.post(f"/_sandbox/tasks/{task.get('id') or task['task_id']}/complete")
    assert forced.status_code == 200, forced.text
    links = _links(forced.json())
    assert links, forced.text
    return sorted(set(links), key=lambda url: not url.endswith(".mp4"))


async def test_result_urls_serve_a_real_mp4_and_jpeg_with_type_and_length(provider: Provider) -> None:
    async with emulator(provider) as client:
        links = await _completed(client, provider)
        for url in links:
            assert url.startswith(str(client.base_url))  # on the emulator itself, not a made-up host
            response = await client.get(url)
            assert response.status_code == 200, response.text
            sample, content_type = MEDIA[url[url.rfind(".") :]]
            assert response.headers["content-type"] == content_type
            assert response.headers["content-length"] == str(len(sample))
            assert response.content == sample
        video = await client.get(links[0])
        assert video.content[4:8] == b"ftyp"
        assert b"moov" in video.content[:64]


async def test_result_url_expires_after_url_ttl_with_a_storage_style_403(provider: Provider) -> None:
    async with emulator(provider, url_ttl_s=0.5) as client:
        url = (await _completed(client, provider))[0]
        assert (await client.get(url)).status_code == 200
        await asyncio.sleep(0.6)
        expired = await client.get(url)
        assert expired.status_code == 403
        assert expired.headers["content-type"].startswith("application/xml")
        assert "<Code>AccessDenied</Code>" in expired.text
        assert "Request has expired" in expired.text


async def test_a_tampered_result_url_is_refused() -> None:
    provider = PROVIDERS[0]
    async with emulator(provider) as client:
        url = (await _completed(client, provider))[0]
        expires = url.split("/_media/")[1].split("/")[0]
        longer = url.replace(f"/_media/{expires}/", f"/_media/{float(expires) + 3600:.3f}/")
        refused = await client.get(longer)
        assert refused.status_code == 403
        assert "<Code>SignatureDoesNotMatch</Code>" in refused.text


async def test_output_bytes_streams_a_padded_video_of_exactly_that_size() -> None:
    provider = PROVIDERS[0]
    size = 5 * 1024 * 1024 + 3
    async with emulator(provider, output_bytes=size) as client:
        url = (await _completed(client, provider))[0]
        digest = hashlib.sha256()
        async with client.stream("GET", url) as response:
            assert response.headers["content-length"] == str(size)
            received = 0
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                received += len(chunk)
        assert received == size
    sample = MEDIA[".mp4"][0]
    expected = hashlib.sha256(sample + struct.pack(">I4s", size - len(sample), b"free") + bytes(size - len(sample) - 8))
    assert digest.hexdigest() == expected.hexdigest()  # the sample, then one `free` box: still a valid MP4


async def test_padded_video_over_4_gib_uses_a_64_bit_box() -> None:
    sample = MEDIA[".mp4"][0]
    size, body = padded_video(len(sample) + 2**32 + 10)
    assert size == len(sample) + 2**32 + 10
    assert not isinstance(body, bytes)
    first = await anext(body)
    assert first == sample + struct.pack(">I4sQ", 1, b"free", 2**32 + 10)
    await body.aclose()  # type: ignore[attr-defined]


async def test_output_content_type_and_media_burst_5xx_knobs() -> None:
    provider = PROVIDERS[0]
    async with emulator(provider, output_content_type="text/html", media_burst_5xx=2) as client:
        url = (await _completed(client, provider))[0]
        assert [(await client.get(url)).status_code for _ in range(3)] == [503, 503, 200]
        assert (await client.get(url)).headers["content-type"].startswith("text/html")


async def test_output_bytes_per_s_slows_the_download() -> None:
    provider = PROVIDERS[0]
    async with emulator(provider, output_bytes=400_000, output_bytes_per_s=1_000_000) as client:
        url = (await _completed(client, provider))[0]
        response = await client.get(url)
        assert len(response.content) == 400_000
        assert response.elapsed.total_seconds() >= 0.35
