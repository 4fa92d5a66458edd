"""The job API as a caller uses it: list with filters and cursor, cancel, models, usage, probes, schema."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from sandbox import SandboxKnobs
from tests import pg
from tests.harness import Stack, stack

SLOW = SandboxKnobs(processing_after_s=30, complete_after_s=60)


async def _create(s: Stack, model: str = "seedancee2/pro", **fields: Any) -> dict[str, Any]:
    body = {"model": model, "input": {"prompt": "p", "resolution": "480p"}, **fields}
    response = await s.client.post(f"{s.url}/v1/jobs", json=body, headers=s.headers)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_list_pages_newest_first_with_an_opaque_cursor(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as s:
        created = [(await _create(s))["id"] for _ in range(7)]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await s.client.get(f"{s.url}/v1/jobs", params=params, headers=s.headers)).json()
            assert len(page["data"]) <= 3
            seen += [j["id"] for j in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert not cursor.startswith("job_")  # opaque
        assert seen == list(reversed(created))


async def test_a_list_page_longer_than_one_chunk_is_whole_in_order_and_pages_on(tmp_path: Path) -> None:
    """A page of up to 100 jobs is read and sent 20 at a time; the client sees one page all the same."""
    async with stack(tmp_path, knobs=SLOW) as s:
        created = [(await _create(s))["id"] for _ in range(47)]
        first = await s.client.get(f"{s.url}/v1/jobs", params={"limit": 45}, headers=s.headers)
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("application/json")
        page = first.json()
        assert [j["id"] for j in page["data"]] == list(reversed(created))[:45]
        rest = (
            await s.client.get(f"{s.url}/v1/jobs", params={"cursor": page["next_cursor"]}, headers=s.headers)
        ).json()
        assert [j["id"] for j in rest["data"]] == list(reversed(created))[45:]
        assert rest["next_cursor"] is None
        exact = (await s.client.get(f"{s.url}/v1/jobs", params={"limit": 47}, headers=s.headers)).json()
        assert len(exact["data"]) == 47
        assert exact["next_cursor"] is None
        bad = await s.client.get(f"{s.url}/v1/jobs", params={"cursor": "nope"}, headers=s.headers)
        assert bad.status_code == 400  # the first chunk is read before the answer starts


async def test_list_filters_by_status_model_provider_and_metadata(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as s:
        a = await _create(s, metadata={"customer_job_id": "job_123", "campaign": "launch"})
        b = await _create(s, model="seedancee2/mini", metadata={"customer_job_id": "job_456"})
        await s.client.post(f"{s.url}/v1/jobs/{b['id']}/cancel", headers=s.headers)

        async def ids(**params: str) -> list[str]:
            response = await s.client.get(f"{s.url}/v1/jobs", params=params, headers=s.headers)
            assert response.status_code == 200, response.text
            return [j["id"] for j in response.json()["data"]]

        assert await ids(**{"metadata.customer_job_id": "job_123"}) == [a["id"]]
        assert await ids(**{"metadata.customer_job_id": "job_123", "metadata.campaign": "other"}) == []
        assert await ids(model="seedancee2/mini") == [b["id"]]
        assert await ids(status="cancelled") == [b["id"]]
        assert await ids(provider="seedancee2") == [b["id"], a["id"]]
        assert await ids(provider="minuit") == []


async def test_cancelling_a_cancelled_job_again_returns_it_with_200_and_changes_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW) as s:
        job = await _create(s)
        response = await s.client.post(f"{s.url}/v1/jobs/{job['id']}/cancel", headers=s.headers)
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert response.json()["completed_at"] is not None
        again = await s.client.post(f"{s.url}/v1/jobs/{job['id']}/cancel", headers=s.headers)
        assert again.status_code == 200, again.text
        assert again.json() == response.json()
        events = [e.type for e in await s.store.events_after(0, job_id=job["id"])]
        assert events[-1] == "job.cancelled"
        assert events.count("job.cancelled") == 1


async def test_cancelling_a_succeeded_job_is_409_job_finished(seedance: Stack) -> None:
    job = await seedance.submit()
    done = await seedance.wait_for(job["id"], {"succeeded"})
    response = await seedance.client.post(f"{seedance.url}/v1/jobs/{job['id']}/cancel", headers=seedance.headers)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "job_finished"
    assert await seedance.job(job["id"]) == done


async def test_models_list_every_id_with_capabilities_and_price(seedance: Stack) -> None:
    response = await seedance.client.get(f"{seedance.url}/v1/models", headers=seedance.headers)
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["data"]}
    assert {"seedancee2/pro", "seedancee2/fast", "seedancee2/mini"} <= set(models)
    pro, mini = models["seedancee2/pro"], models["seedancee2/mini"]
    assert pro["available"] is True
    assert pro["capabilities"]["resolutions"] == ["480p", "720p", "1080p"]
    assert mini["capabilities"]["resolutions"] == ["480p", "720p"]
    assert pro["capabilities"]["durations"] == list(range(4, 16))
    assert "9:21" not in pro["capabilities"]["aspect_ratios"]
    assert pro["price"]["unit"] == "credits"
    assert pro["price"]["per_second"] == {"480p": 10.0, "720p": 20.0, "1080p": 50.0}


async def test_a_provider_without_api_key_is_unavailable_and_says_so(tmp_path: Path) -> None:
    async with stack(tmp_path, provider_overrides={"seedancee2": {"api_key": None}}) as s:
        models = (await s.client.get(f"{s.url}/v1/models", headers=s.headers)).json()["data"]
        assert {m["id"]: m["available"] for m in models}["seedancee2/pro"] is False
        response = await s.client.post(
            f"{s.url}/v1/jobs", json={"model": "seedancee2/pro", "input": {"prompt": "p"}}, headers=s.headers
        )
        assert response.status_code == 400
        assert "REELAY_SEEDANCEE2_API_KEY" in response.json()["error"]["message"]


async def test_model_alias_resolves_to_the_model_id(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, model_aliases={"seedance-2-fast": "seedancee2/fast"}) as s:
        job = await _create(s, model="seedance-2-fast")
        assert job["model"] == "seedancee2/fast"


async def test_usage_counts_jobs_and_credits_by_status_model_and_day(seedance: Stack) -> None:
    done = await seedance.submit(model="seedancee2/mini", resolution="720p")  # 10 cr/s x 5 s
    await seedance.wait_for(done["id"], {"succeeded"})
    await seedance.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={"complete_after_s": 60})
    await seedance.submit(model="seedancee2/pro", resolution="480p")  # 10 cr/s x 5 s, still running
    response = await seedance.client.get(f"{seedance.url}/v1/usage", headers=seedance.headers)
    assert response.status_code == 200
    usage = response.json()
    assert usage["total"]["jobs"] == 2
    assert usage["total"]["credits_estimate"] == 100
    assert usage["total"]["credits_charged"] == 50
    assert usage["by_status"] == {"queued": 1, "succeeded": 1}
    assert usage["by_model"]["seedancee2/mini"]["credits_charged"] == 50
    day = done["created_at"][:10]
    assert usage["by_day"][day]["jobs"] == 2
    later = await seedance.client.get(
        f"{seedance.url}/v1/usage", params={"start": "2999-01-01"}, headers=seedance.headers
    )
    assert later.json()["total"]["jobs"] == 0


async def test_usage_shows_a_provider_without_a_price_as_null_and_counts_the_jobs_left_out(tmp_path: Path) -> None:
    async with stack(tmp_path, knobs=SLOW, providers=("seedancee2", "magnific")) as s:
        await _create(s, model="seedancee2/mini")  # 5 cr/s x 5 s
        await _create(s, model="magnific/seedance-2-mini")  # Magnific publishes no price
        usage = (await s.client.get(f"{s.url}/v1/usage", headers=s.headers)).json()
    unpriced = usage["by_model"]["magnific/seedance-2-mini"]
    assert unpriced["jobs"] == 1
    figures = ("credits_estimate", "credits_charged", "usd_estimate", "usd_charged")
    assert [unpriced[f] for f in figures] == [None] * 4
    assert unpriced["jobs_without"] == dict.fromkeys(figures, 1)
    assert usage["total"]["credits_estimate"] == 25
    assert usage["total"]["usd_estimate"] is None
    assert usage["total"]["jobs_without"]["credits_estimate"] == 1


async def test_usage_money_is_summed_exactly_and_sent_as_json_numbers(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=("mindvideo",)) as s:
        jobs = [await _create(s, model="mindvideo/doubao-seedance-2-0-fast") for _ in range(5)]  # $0.0657 each
        for job in jobs:
            done = await s.wait_for(job["id"], {"succeeded"})
            assert done["cost"]["usd_estimate"] == done["cost"]["usd_charged"] == 0.0657
        response = await s.client.get(f"{s.url}/v1/usage", headers=s.headers)
    assert response.status_code == 200
    total = json.loads(response.text, parse_float=Decimal)["total"]
    # Summed as floats, five of them make 0.32849999999999996.
    assert (total["usd_estimate"], total["usd_charged"]) == (Decimal("0.3285"), Decimal("0.3285"))
    assert '"usd_charged":0.3285' in response.text
    assert total["credits_estimate"] is None  # MindVideo prices in USD only
    assert total["jobs_without"]["credits_estimate"] == 5


async def test_usage_range_is_start_inclusive_end_exclusive_and_refuses_an_empty_or_reversed_one(
    seedance: Stack,
) -> None:
    job = await seedance.submit()
    created = datetime.fromisoformat(job["created_at"])
    millisecond = timedelta(milliseconds=1)

    async def usage(start: datetime | str, end: datetime | str) -> httpx.Response:
        params = {k: v if isinstance(v, str) else v.isoformat() for k, v in (("start", start), ("end", end))}
        return await seedance.client.get(f"{seedance.url}/v1/usage", params=params, headers=seedance.headers)

    assert (await usage(created, created + millisecond)).json()["total"]["jobs"] == 1
    assert (await usage(created - millisecond, created)).json()["total"]["jobs"] == 0
    day = created.date()
    assert (await usage(day.isoformat(), (day + timedelta(days=1)).isoformat())).json()["total"]["jobs"] == 1
    for start, end in ((created + millisecond, created), (created, created), ("2025-07-01", "2025-06-01")):
        refused = await usage(start, end)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_request"
        assert error["details"]["fields"] == ["start", "end"]
        assert f"start ({error['details']['start']})" in error["message"]
        assert f"end ({error['details']['end']})" in error["message"]


async def test_probes_metrics_and_schema(seedance: Stack) -> None:
    assert (await seedance.client.get(f"{seedance.url}/healthz")).json() == {"status": "ok"}
    assert (await seedance.client.get(f"{seedance.url}/readyz")).json() == {"status": "ready"}
    job = await seedance.submit()
    await seedance.wait_for(job["id"], {"succeeded"})
    metrics = (await seedance.client.get(f"{seedance.url}/metrics")).text
    assert 'reelay_webhooks_total{provider="seedancee2",result="applied"} 1.0' in metrics
    assert 'route="/v1/jobs"' in metrics
    # The loop-lag watcher has been observing every 10 ms since start-up (a job takes well over 100 ms).
    lag_count = next(line for line in metrics.splitlines() if line.startswith("reelay_event_loop_lag_seconds_count"))
    assert float(lag_count.split()[1]) >= 5
    schema = (await seedance.client.get(f"{seedance.url}/schema")).json()
    assert schema["openapi"].startswith("3.")
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/events", "/v1/models", "/v1/usage"):
        assert path in schema["paths"], path
    create = schema["paths"]["/v1/jobs"]["post"]
    assert "202" in create["responses"]
    assert create["requestBody"]["content"]["application/json"]["schema"]


async def test_readyz_fails_when_the_database_is_gone(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        await s.store.close()
        response = await s.client.get(f"{s.url}/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        assert (await s.client.get(f"{s.url}/healthz")).status_code == 200
        await asyncio.sleep(0)
        await s.store.open()  # let the app shut down normally


async def test_metadata_with_a_nul_character_is_refused(seedance: Stack) -> None:
    body = {"model": "seedancee2/pro", "input": {"prompt": "p"}, "metadata": {"k": "a\u0000b"}}
    response = await seedance.client.post(f"{seedance.url}/v1/jobs", json=body, headers=seedance.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_a_filter_postgresql_cannot_hold_is_400_not_an_outage(
    postgres_server: pg.PostgresServer, tmp_path: Path
) -> None:
    # PostgreSQL text cannot hold NUL; the refusal is about the request, so it must not read as "unavailable".
    async with postgres_server.database() as database_url, stack(tmp_path, database_url=database_url) as s:
        for query in ("model=a%00b", "metadata.k=a%00b"):
            response = await s.client.get(f"{s.url}/v1/jobs?{query}", headers=s.headers)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_request"
        assert (await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).status_code == 200
        assert (await s.client.get(f"{s.url}/readyz")).status_code == 200
