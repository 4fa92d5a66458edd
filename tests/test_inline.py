"""Inline data (`data:` URIs): capped per job, sent upstream and shown by `GET /v1/jobs/{id}` in full, and a
placeholder everywhere else (the create answer, lists, the event log, SSE frames)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from service.errors import ConfigError, InvalidRequest
from service.inline import check_inline, inline_size, placeholder, restore_inline, split_inline
from service.lifecycle import new_job
from service.providers import ADAPTERS
from service.settings import Settings
from tests.harness import collect_events, data_uri, stack


def expected_placeholder(uri: str) -> str:
    content = base64.b64decode(uri.partition(",")[2])
    return f"inline:image/png;bytes={len(content)};sha256={hashlib.sha256(content).hexdigest()}"


# -- the placeholder ---------------------------------------------------------------------------


def test_a_placeholder_names_media_type_size_and_digest_of_the_decoded_content() -> None:
    assert placeholder("data:image/png;base64,aGVsbG8=") == (
        "inline:image/png;bytes=5;sha256=2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert placeholder("DATA:,hello%20you").startswith("inline:text/plain;bytes=9;sha256=")


def test_split_and_restore_give_back_the_input_wherever_data_uris_are() -> None:
    first, second = data_uri(200), data_uri(300, "audio/mpeg")
    given = {
        "prompt": "data: is just a word here",
        "first_frame": first,
        "reference_images": ["https://example.com/a.png", first],
        "provider_options": {"nested": [{"clip": second}]},
    }
    shown, uris = split_inline(given)
    assert shown["prompt"] == given["prompt"]
    assert shown["first_frame"] == shown["reference_images"][1] == expected_placeholder(first)
    assert shown["provider_options"]["nested"][0]["clip"].startswith("inline:audio/mpeg;bytes=")
    assert "base64," not in msgspec.json.encode(shown).decode()
    assert len(uris) == 2
    assert restore_inline(shown, uris) == given
    assert inline_size(given) == 2 * len(first) + len(second)


def test_inline_data_over_the_cap_is_refused_with_limit_and_size() -> None:
    uri = data_uri(1000)
    check_inline({"first_frame": uri}, len(uri))
    with pytest.raises(InvalidRequest) as refused:
        check_inline({"first_frame": uri, "last_frame": uri}, len(uri))
    assert refused.value.details == {"field": "input", "limit": len(uri), "size": 2 * len(uri)}


def test_the_inline_cap_is_a_setting_that_fits_under_the_body_cap_by_default() -> None:
    default = Settings.from_env({}, adapters=ADAPTERS)
    assert 0 < default.max_inline_bytes < default.max_body_bytes
    assert Settings.from_env({"REELAY_MAX_INLINE_BYTES": "0"}, adapters=ADAPTERS).max_inline_bytes == 0
    with pytest.raises(ConfigError, match="REELAY_MAX_INLINE_BYTES must be at least 0"):
        Settings.from_env({"REELAY_MAX_INLINE_BYTES": "-1"}, adapters=ADAPTERS)


# -- over HTTP ---------------------------------------------------------------------------------


async def test_a_job_over_the_inline_cap_is_a_400_naming_the_limit_and_the_size(tmp_path: Path) -> None:
    async with stack(tmp_path, max_inline_bytes=4000) as s:
        images = [data_uri(2000), data_uri(2500)]
        body = {"model": "seedancee2/pro", "input": {"prompt": "p", "reference_images": images}}
        refused = await s.client.post(f"{s.url}/v1/jobs", json=body, headers=s.headers)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        size = sum(len(uri) for uri in images)
        assert error["code"] == "invalid_request"
        assert error["details"] == {"field": "input", "limit": 4000, "size": size}
        assert "4000" in error["message"]
        assert str(size) in error["message"]
        assert "REELAY_MAX_INLINE_BYTES" in error["message"]
        await s.submit(reference_images=[data_uri(4000)])  # up to the cap is fine


async def test_events_lists_and_sse_frames_carry_the_placeholder_not_the_data(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        uri = data_uri(s.settings.max_inline_bytes)
        created = await s.submit(reference_images=[uri])
        shown = [expected_placeholder(uri)]
        assert created["input"]["reference_images"] == shown
        frames: list[dict[str, Any]] = []
        await collect_events(s, f"{s.url}/v1/jobs/{created['id']}/events", "job.succeeded", frames)
        assert (frames[0]["type"], frames[1]["type"], frames[-1]["type"]) == (
            "job.created",
            "job.submitted",
            "job.succeeded",
        )
        assert all(f["job"]["input"]["reference_images"] == shown for f in frames)
        logged = await s.store.events_after(0, job_id=created["id"])
        assert all(uri.encode() not in event.job and shown[0].encode() in event.job for event in logged)
        listed = await s.client.get(f"{s.url}/v1/jobs", params={"limit": 100}, headers=s.headers)
        assert listed.status_code == 200
        assert listed.json()["data"][0]["input"]["reference_images"] == shown
        assert len(listed.content) < 10_000


async def test_get_job_and_the_upstream_create_carry_the_full_data_uri(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        uri = data_uri(s.settings.max_inline_bytes - 200)
        created = await s.submit(reference_images=[uri], first_frame=data_uri(100), last_frame=data_uri(100))
        await s.accepted(created["id"])
        job = await s.job(created["id"])
        assert job["input"]["reference_images"] == [uri]
        assert job["input"]["first_frame"].startswith("data:image/png;base64,")
        sent = (await s.sandbox("seedancee2", "GET", "/_sandbox/creates"))["accepted"]
        assert [create["body"]["input"]["image_urls"] for create in sent] == [[uri]]
        assert sent[0]["body"]["input"]["start_image_url"] == job["input"]["first_frame"]


async def test_a_job_stored_before_inline_data_was_kept_apart_reads_in_full_and_lists_with_placeholders(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        uri = data_uri(5000)
        key_id = (await s.store.list_api_keys())[0].id
        old = new_job(  # as jobs were stored before: the data URI in the job's own input
            job_id="job_01J00000000000000000000000",
            api_key_id=key_id,
            model="seedancee2/pro",
            provider="seedancee2",
            input={"prompt": "p", "reference_images": [uri]},
            metadata={},
            cost={},
            callback_token="t",
            now=1_750_000_000.0,
            timeout=3600.0,
        )
        await s.store.create_job(msgspec.structs.replace(old, dispatch_state="done"), "job.created")
        assert (await s.job(old.id))["input"]["reference_images"] == [uri]
        listed = (await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).json()["data"]
        assert listed[0]["input"]["reference_images"] == [expected_placeholder(uri)]
