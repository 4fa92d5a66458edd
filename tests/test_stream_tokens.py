"""Stream tokens over real HTTP: what a browser's EventSource may open with `?token=`, and nothing more."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import SandboxKnobs
from service.ids import split_api_key
from service.keys import create_key
from service.logging import configure_logging
from service.timestamps import from_iso
from service.tokens import MAX_TOKEN_CHARS, StreamTokens
from tests import pg
from tests.harness import Stack, stack

_UNFINISHED = SandboxKnobs(processing_after_s=0.1, complete_after_s=600)


async def _token(s: Stack, status: int = 201, **body: Any) -> dict[str, Any]:
    response = await s.client.post(f"{s.url}/v1/stream-tokens", json={"ttl_seconds": 600, **body}, headers=s.headers)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _submit(s: Stack, **metadata: str) -> dict[str, Any]:
    body = {"model": "seedancee2/pro", "input": {"prompt": "waves", "duration": 5}, "metadata": metadata}
    response = await s.client.post(f"{s.url}/v1/jobs", json=body, headers=s.headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    """Each event of an SSE answer as (its `id:` line, its decoded data); comments and `retry:` are skipped."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield fields.get("id"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def _read_all(s: Stack, path: str, token: str, **headers: str) -> list[dict[str, Any]]:
    """Every event of a stream that ends by itself (a job's), or of /v1/events up to the newest logged event."""
    newest = await s.store.last_event_id()
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(10), s.client.stream("GET", s.url + path, params={"token": token}, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for event_id, event in _events(r):
            assert event_id == str(event["id"])
            found.append(event)
            if path == "/v1/events" and event["id"] >= newest:
                break
    return found


async def _status_without_key(s: Stack, path: str, token: str, **headers: str) -> httpx.Response:
    async with s.client.stream("GET", s.url + path, params={"token": token}, headers=headers) as r:
        await r.aread()
        return r


async def test_a_stream_token_opens_both_event_streams_without_an_api_key(seedance: Stack) -> None:
    job = await seedance.submit()
    await seedance.wait_for(job["id"], {"succeeded"})
    before = time.time()
    answer = await _token(seedance, ttl_seconds=120)
    assert set(answer) == {"token", "expires_at"}
    assert answer["token"].startswith("rst_")
    assert before + 119 <= from_iso(answer["expires_at"]).timestamp() <= time.time() + 121
    logged = [e.id for e in await seedance.store.events_after(0, job_id=job["id"])]
    # A job's stream replays the job and ends at its terminal event, as with a key.
    replayed = await _read_all(seedance, f"/v1/jobs/{job['id']}/events", answer["token"])
    assert [e["id"] for e in replayed] == logged
    assert replayed[-1]["type"] == "job.succeeded"
    everything = await _read_all(seedance, "/v1/events", answer["token"], **{"Last-Event-ID": "0"})
    assert [e["id"] for e in everything] == logged


@pytest.mark.parametrize("ttl", [0, -5, 3601, 10**12, 1.5, 600.0, "600", True, None, [600]], ids=lambda v: f"ttl={v!r}")
async def test_ttl_seconds_outside_1_to_3600_or_not_an_integer_is_400(seedance: Stack, ttl: Any) -> None:
    response = await seedance.client.post(
        f"{seedance.url}/v1/stream-tokens", json={"ttl_seconds": ttl}, headers=seedance.headers
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "ttl_seconds" in error["message"]


@pytest.mark.parametrize(
    "body",
    [{}, {"ttl_seconds": 60, "scope": "write"}, {"ttl_seconds": 60, "metadata": {"bad key!": "x"}}, []],
    ids=["missing-ttl", "unknown-field", "bad-metadata-key", "not-an-object"],
)
async def test_a_malformed_token_request_is_400(seedance: Stack, body: Any) -> None:
    response = await seedance.client.post(f"{seedance.url}/v1/stream-tokens", json=body, headers=seedance.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


async def test_a_metadata_filter_too_long_for_a_token_url_is_400_naming_it(seedance: Stack) -> None:
    metadata = {f"key{i}": "v" * 400 for i in range(10)}  # each pair valid, together past MAX_TOKEN_CHARS
    response = await seedance.client.post(
        f"{seedance.url}/v1/stream-tokens", json={"ttl_seconds": 60, "metadata": metadata}, headers=seedance.headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"] == {"field": "metadata", "max_token_chars": MAX_TOKEN_CHARS}
    short = {f"key{i}": "v" * 20 for i in range(10)}
    assert len((await _token(seedance, metadata=short))["token"]) <= MAX_TOKEN_CHARS


async def test_a_token_for_another_keys_job_or_no_job_is_404_at_creation(seedance: Stack) -> None:
    job = await seedance.submit()
    _, other_key = await create_key(seedance.store, "other", now=time.time())
    response = await seedance.client.post(
        f"{seedance.url}/v1/stream-tokens",
        json={"ttl_seconds": 60, "job_id": job["id"]},
        headers={"Authorization": f"Bearer {other_key}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    await _token(seedance, 404, job_id="job_doesnotexist")
    assert (await seedance.client.post(f"{seedance.url}/v1/stream-tokens", json={"ttl_seconds": 60})).status_code == 401


async def test_a_job_token_streams_only_its_job_and_another_jobs_stream_is_404(seedance: Stack) -> None:
    mine, other = await seedance.submit(), await seedance.submit()
    for job in (mine, other):
        await seedance.wait_for(job["id"], {"succeeded"})
    token = (await _token(seedance, job_id=mine["id"]))["token"]
    refused = await _status_without_key(seedance, f"/v1/jobs/{other['id']}/events", token)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"
    everything = await _read_all(seedance, f"/v1/jobs/{mine['id']}/events", token)
    assert {e["job"]["id"] for e in everything} == {mine["id"]}
    # On /v1/events the token narrows the key's stream to the job: replayed, then live, never another job's.
    async with seedance.client.stream(
        "GET", f"{seedance.url}/v1/events", params={"token": token}, headers={"Last-Event-ID": "0"}
    ) as r:
        assert r.status_code == 200
        seen = []
        async with asyncio.timeout(10):
            async for _, event in _events(r):
                seen.append(event)
                if event["type"] == "job.succeeded":
                    break
    assert [e["id"] for e in seen] == [e["id"] for e in everything]


async def test_a_metadata_token_streams_only_jobs_whose_metadata_matches(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        token = (await _token(s, metadata={"team": "red"}))["token"]
        early = await _submit(s, team="red", shot="1")
        await _submit(s, team="blue")
        await _submit(s)
        await s.wait_for(early["id"], {"succeeded"})
        async with s.client.stream("GET", f"{s.url}/v1/events", params={"token": token}) as live:
            assert live.status_code == 200
            late_blue = await _submit(s, team="blue")
            late_red = await _submit(s, team="red")
            seen = []
            async with asyncio.timeout(10):
                async for _, event in _events(live):
                    seen.append(event)
                    if event["type"] == "job.succeeded":
                        break
        assert {e["job"]["id"] for e in seen} == {late_red["id"]}  # live: the blue job's events were left out
        replayed = await _read_all(s, "/v1/events", token, **{"Last-Event-ID": "0"})
        assert {e["job"]["id"] for e in replayed} == {early["id"], late_red["id"]}
        assert all(e["job"]["metadata"]["team"] == "red" for e in replayed)
        refused = await _status_without_key(s, f"/v1/jobs/{late_blue['id']}/events", token)
        assert refused.status_code == 404


async def test_an_expired_token_is_401_token_expired_and_a_tampered_one_401_invalid_token(seedance: Stack) -> None:
    job = await seedance.submit()
    secret = await seedance.store.server_secret("stream_tokens", new_value="unused: the app made it at start-up")
    key_id = _key_id(seedance)
    expired, _ = StreamTokens(secret, clock=lambda: time.time() - 7200).issue(key_id, 3600)
    good = (await _token(seedance))["token"]
    body, _, signature = good.rpartition(".")
    claims = json.loads(base64.urlsafe_b64decode(body.removeprefix("rst_") + "=="))
    widened = "rst_" + base64.urlsafe_b64encode(json.dumps({**claims, "exp": claims["exp"] + 86400}).encode()).decode()
    forged, _ = StreamTokens("another secret", clock=time.time).issue(key_id, 600)
    for path in ("/v1/events", f"/v1/jobs/{job['id']}/events"):
        response = await _status_without_key(seedance, path, expired)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "token_expired"
        for bad in (widened.rstrip("=") + "." + signature, forged, good[:-3], "rst_.", "", "garbage", "é" * 10):
            response = await _status_without_key(seedance, path, bad)
            assert response.status_code == 401, bad
            assert response.json()["error"]["code"] == "invalid_token", bad


async def test_only_the_two_event_streams_accept_a_token(seedance: Stack) -> None:
    """Every other /v1 route answers a request that has only a token as one with no key at all (401), or, where
    the query is checked before the key (models, providers, usage), refuses `token` as an unknown parameter."""
    job = await seedance.submit()
    token = (await _token(seedance))["token"]
    streams = {"/v1/events", "/v1/jobs/{job_id:str}/events"}
    tried = set()
    for route in seedance.app.routes:
        if not route.path.startswith("/v1") or route.path in streams:
            continue
        path = route.path.replace("{job_id:str}", job["id"]).replace("{", "").replace(":str}", "")
        for method in sorted(set(route.methods) - {"OPTIONS", "HEAD"}):
            response = await seedance.client.request(method, seedance.url + path, params={"token": token}, json={})
            assert response.status_code in (400, 401), (method, route.path, response.text)
            if response.status_code == 400:
                assert response.json()["error"]["details"]["parameter"] == "token"
            tried.add((route.path, response.status_code))
    keyed = {"/v1/jobs", "/v1/jobs/{job_id:str}", "/v1/jobs/{job_id:str}/cancel", "/v1/stream-tokens"}
    assert {(path, 401) for path in keyed} <= tried
    for path in streams:
        url = seedance.url + path.replace("{job_id:str}", job["id"])
        async with seedance.client.stream("GET", url, params={"token": token}) as r:
            assert r.status_code == 200


async def test_a_token_stream_closes_within_the_key_cache_window_once_the_key_is_revoked(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=_UNFINISHED) as s:
        job = await s.submit()
        token = (await _token(s))["token"]
        window = s.app.state.ctx.key_cache_seconds
        key_id = _key_id(s)

        async def until_end(path: str) -> list[str]:
            async with s.client.stream("GET", s.url + path, params={"token": token}) as r:
                assert r.status_code == 200
                return [line async for line in r.aiter_lines() if line.startswith(":")]

        streams = [asyncio.create_task(until_end(p)) for p in ("/v1/events", f"/v1/jobs/{job['id']}/events")]
        async with asyncio.timeout(5):
            while s.hub.count_for(key_id) < 2:
                await asyncio.sleep(0.01)
        assert await s.store.revoke_api_key(key_id, "2026-01-01T00:00:00Z")
        revoked = time.monotonic()
        async with asyncio.timeout(window + 5):
            ends = await asyncio.gather(*streams)
        assert time.monotonic() - revoked <= window + 2
        assert all(comments[-1] == ": api key revoked" for comments in ends)
        again = await _status_without_key(s, "/v1/events", token)
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "invalid_token"


async def test_an_event_source_that_reconnects_with_last_event_id_and_its_token_misses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """What a browser's EventSource does: the same URL (token included) again, with `Last-Event-ID` set to the
    last id it received; events logged while it was away come first, then live ones."""
    async with stack(tmp_path) as s:
        token = (await _token(s))["token"]
        start = await s.store.last_event_id()
        jobs = []
        received: list[int] = []
        async with s.client.stream("GET", f"{s.url}/v1/events", params={"token": token}) as first:
            assert first.status_code == 200
            jobs = [await s.submit() for _ in range(3)]
            async with asyncio.timeout(10):
                async for event_id, _ in _events(first):
                    assert event_id is not None
                    received.append(int(event_id))
                    if len(received) == 3:
                        break  # the connection drops here
        jobs.append(await s.submit())  # logged while the client is away
        for job in jobs:
            await s.wait_for(job["id"], {"succeeded"})
        async with s.client.stream(
            "GET", f"{s.url}/v1/events", params={"token": token}, headers={"Last-Event-ID": str(received[-1])}
        ) as second:
            assert second.status_code == 200
            newest = await s.store.last_event_id()
            late = await s.submit()  # and live after the replay
            async with asyncio.timeout(10):
                async for event_id, event in _events(second):
                    received.append(int(event_id or 0))
                    if event["job"]["id"] == late["id"] and event["type"] == "job.succeeded":
                        break
        logged = [e.id for e in await s.store.events_after(start, api_key_id=_key_id(s))]
        assert received == logged
        assert newest in received


async def test_stream_tokens_never_reach_a_log_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("json", "info")
    async with stack(tmp_path) as s:
        job = await s.submit()
        await s.wait_for(job["id"], {"succeeded"})
        token = (await _token(s, job_id=job["id"]))["token"]
        await _read_all(s, f"/v1/jobs/{job['id']}/events", token)
        await _read_all(s, "/v1/events", token, **{"Last-Event-ID": "0"})
        assert (await _status_without_key(s, "/v1/jobs", token)).status_code == 401
        assert (await _status_without_key(s, "/v1/events", token + "x")).status_code == 401
        assert (await _status_without_key(s, "/v1/events", f"{token}&token={token}")).status_code == 401
    logs = capfd.readouterr().err
    requests = [json.loads(line) for line in logs.splitlines() if '"http.request"' in line]
    assert len(requests) >= 5
    assert token not in logs
    assert token.rpartition(".")[2] not in logs  # not even the signature alone
    assert sum("token=[redacted]" in r.get("query", "") for r in requests) >= 5


def _key_id(s: Stack) -> str:
    parts = split_api_key(s.key)
    assert parts is not None
    return parts[0]


async def test_stream_tokens_are_in_the_openapi_document(seedance: Stack) -> None:
    schema = (await seedance.client.get(f"{seedance.url}/schema/openapi.json")).json()
    create = schema["paths"]["/v1/stream-tokens"]["post"]
    assert {"201", "400", "401", "404"} <= set(create["responses"])
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
    body = schema["components"]["schemas"][ref]
    assert body["required"] == ["ttl_seconds"]
    assert (body["properties"]["ttl_seconds"]["minimum"], body["properties"]["ttl_seconds"]["maximum"]) == (1, 3600)
    assert schema["components"]["securitySchemes"]["streamToken"] == {
        "type": "apiKey",
        "name": "token",
        "in": "query",
        "description": "a stream token (POST /v1/stream-tokens); only the two event streams take it",
    }
    for path in ("/v1/events", "/v1/jobs/{job_id}/events"):
        operation = schema["paths"][path]["get"]
        assert "token" in {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert {"streamToken": []} in operation["security"]
    others = [
        op
        for p, ops in schema["paths"].items()
        if p not in ("/v1/events", "/v1/jobs/{job_id}/events")
        for op in ops.values()
        if isinstance(op, dict)
    ]
    assert all({"streamToken": []} not in op.get("security", []) for op in others)


async def test_a_token_one_replica_signed_opens_a_stream_on_another(
    tmp_path: Path, postgres_server: pg.PostgresServer
) -> None:
    """The signing secret is the database's, made once: every replica checks what any replica signed."""
    async with (
        postgres_server.database() as url,
        stack(tmp_path / "a", database_url=url) as a,
        stack(tmp_path / "b", database_url=url) as b,
    ):
        job = await a.submit()
        await a.wait_for(job["id"], {"succeeded"})
        token = (await _token(a, job_id=job["id"]))["token"]
        replayed = await _read_all(b, f"/v1/jobs/{job['id']}/events", token)
        assert replayed[-1]["type"] == "job.succeeded"


async def test_only_an_unscoped_token_sees_the_keys_budget_threshold_events(tmp_path: Path) -> None:
    """budget.threshold belongs to the key, not to a job: a token narrowed to a job or to a metadata filter sees
    none of them, live or replayed, while a token for all the key's events sees both."""
    from tests.test_budgets import post_job, set_budget

    async with stack(tmp_path, knobs=_UNFINISHED) as s:
        await set_budget(s, credits="100")
        start = await s.store.last_event_id()
        first = await post_job(s, metadata={"team": "red"})  # 50 %: no event yet
        assert first.status_code == 202, first.text
        job = first.json()
        tokens = {
            "all": (await _token(s))["token"],
            "job": (await _token(s, job_id=job["id"]))["token"],
            "metadata": (await _token(s, metadata={"team": "red"}))["token"],
        }

        async def live(token: str, found: list[dict[str, Any]], opened: asyncio.Event, **headers: str) -> None:
            """Every event until the first job's job.cancelled, the last one this test makes."""
            async with s.client.stream("GET", f"{s.url}/v1/events", params={"token": token}, headers=headers) as r:
                assert r.status_code == 200
                opened.set()
                async for _, event in _events(r):
                    found.append(event)
                    if event["type"] == "job.cancelled" and event["job"]["id"] == job["id"]:
                        return

        seen: dict[str, list[dict[str, Any]]] = {name: [] for name in tokens}
        opened = {name: asyncio.Event() for name in tokens}
        readers = [asyncio.create_task(live(tokens[n], seen[n], opened[n])) for n in tokens]
        async with asyncio.timeout(10):
            await asyncio.gather(*(o.wait() for o in opened.values()))
        for extra in ({"duration": 6}, {"duration": 4}):  # 80 %, then 100 %: two threshold events
            made = await post_job(s, input={"resolution": "480p", **extra}, metadata={"team": "red"})
            assert made.status_code == 202, made.text
        cancel = await s.client.post(f"{s.url}/v1/jobs/{job['id']}/cancel", headers=s.headers)
        assert cancel.status_code == 200, cancel.text
        async with asyncio.timeout(10):
            await asyncio.gather(*readers)
        replayed: dict[str, list[dict[str, Any]]] = {name: [] for name in tokens}
        async with asyncio.timeout(10):
            for name, token in tokens.items():
                await live(token, replayed[name], asyncio.Event(), **{"Last-Event-ID": str(start)})
    for found in (seen, replayed):
        thresholds = {name: [e for e in events if e["type"] == "budget.threshold"] for name, events in found.items()}
        assert [e["detail"]["threshold"] for e in thresholds["all"]] == [80, 100]
        assert thresholds["job"] == thresholds["metadata"] == []
        assert {e["job"]["id"] for e in found["job"]} == {job["id"]}
        assert len({e["job"]["id"] for e in found["metadata"]}) == 3
