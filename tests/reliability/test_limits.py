"""Limits and hardening over real HTTP: per-key rate limit, per-key SSE cap, security headers, CORS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from service.api.limits import RateLimiter
from service.ids import split_api_key
from service.keys import create_key
from tests.harness import stack


async def test_rate_limit_answers_429_with_retry_after_per_key(tmp_path: Path) -> None:
    async with stack(tmp_path, rate_limit_per_second=2.0, rate_limit_burst=5) as s:
        statuses = [(await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).status_code for _ in range(8)]
        assert statuses[:5] == [200] * 5
        assert 429 in statuses[5:]
        refused = await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        _, other = await create_key(s.store, "other", now=time.time())  # another key has its own bucket
        assert (await s.client.get(f"{s.url}/v1/jobs", headers={"x-api-key": other})).status_code == 200
        await asyncio.sleep(1.1)
        assert (await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).status_code == 200


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(3)] == [None, None, None]
    wait = limiter.take("k")
    assert wait == pytest.approx(0.1)
    now[0] += 0.1
    assert limiter.take("k") is None
    assert RateLimiter(rate=0, burst=1, clock=lambda: now[0]).take("k") is None  # 0 turns the limit off


async def test_open_event_streams_are_capped_per_key(tmp_path: Path) -> None:
    async with stack(tmp_path, sse_max_per_key=2) as s:
        clients = [httpx.AsyncClient(timeout=5) for _ in range(2)]
        try:
            for client in clients:
                response = await client.send(
                    client.build_request("GET", f"{s.url}/v1/events", headers=s.headers), stream=True
                )
                assert response.status_code == 200
            refused = await s.client.get(f"{s.url}/v1/events", headers=s.headers)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert refused.headers["retry-after"] == "5"
        finally:
            for client in clients:
                await client.aclose()
        key_id = (split_api_key(s.key) or ("", ""))[0]
        async with asyncio.timeout(5):  # the closed streams give their places back
            while s.hub.count_for(key_id):
                await asyncio.sleep(0.02)
        assert (await s.client.get(f"{s.url}/v1/jobs", headers=s.headers)).status_code == 200


@pytest.mark.parametrize(
    ("path", "authenticated", "status", "html"),
    [
        ("/v1/jobs", True, 200, False),
        ("/v1/jobs", False, 401, False),
        ("/healthz", False, 200, False),
        ("/no/such/route", False, 404, False),
        ("/schema", False, 200, False),
        ("/schema/swagger", False, 200, True),
    ],
)
async def test_security_headers_on_every_response(
    tmp_path: Path, path: str, authenticated: bool, status: int, html: bool
) -> None:
    async with stack(tmp_path) as s:
        response = await s.client.get(s.url + path, headers=s.headers if authenticated else {})
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert ("default-src 'none'" in csp) is not html
    assert response.headers["cache-control"] == "no-store"


async def test_cors_is_off_unless_configured(tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with stack(tmp_path) as s:
        response = await s.client.options(f"{s.url}/v1/jobs", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with stack(tmp_path / "cors", cors_origins=("https://app.example",)) as s:
        response = await s.client.options(f"{s.url}/v1/jobs", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await s.client.options(f"{s.url}/v1/jobs", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
