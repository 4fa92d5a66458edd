"""CORS over real HTTP, when REELAY_CORS_ORIGINS names the origins: what a browser's scripts may send and read."""

from __future__ import annotations

from pathlib import Path

from tests.harness import stack

_ORIGIN = "https://app.example"


def _names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


async def test_preflight_allows_the_headers_a_browser_client_sends(tmp_path: Path) -> None:
    sent = ["authorization", "content-type", "idempotency-key", "last-event-id", "x-api-key", "cancel-after"]
    async with stack(tmp_path, cors_origins=(_ORIGIN,)) as s:
        response = await s.client.options(
            f"{s.url}/v1/jobs",
            headers={
                "Origin": _ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": ", ".join(sent),
            },
        )
        assert response.status_code in (200, 204), response.text
        assert response.headers["access-control-allow-origin"] == _ORIGIN
        assert set(sent) <= _names(response.headers["access-control-allow-headers"])
        assert "post" in _names(response.headers["access-control-allow-methods"])
        # The list is explicit, not an echo of whatever a page asks for.
        unlisted = await s.client.options(
            f"{s.url}/v1/jobs",
            headers={
                "Origin": _ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-unlisted",
            },
        )
        assert "x-unlisted" not in _names(unlisted.headers.get("access-control-allow-headers", ""))


async def test_answers_expose_request_id_retry_after_and_last_event_id_to_scripts(tmp_path: Path) -> None:
    async with stack(tmp_path, cors_origins=(_ORIGIN,), rate_limit_per_second=1.0, rate_limit_burst=1) as s:
        headers = {**s.headers, "Origin": _ORIGIN}
        ok = await s.client.get(f"{s.url}/v1/jobs", headers=headers)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == _ORIGIN
        assert {"x-request-id", "retry-after", "last-event-id"} <= _names(ok.headers["access-control-expose-headers"])
        assert ok.headers["x-request-id"]
        # A 429's Retry-After is what a script most needs to read: the error answer carries the same headers.
        limited = await s.client.get(f"{s.url}/v1/jobs", headers=headers)
        assert limited.status_code == 429
        assert limited.headers["retry-after"]
        assert limited.headers["access-control-allow-origin"] == _ORIGIN
        assert "retry-after" in _names(limited.headers["access-control-expose-headers"])
        # Another origin is not let in.
        other = await s.client.get(f"{s.url}/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_a_page_on_an_allowed_origin_can_open_an_event_stream_with_a_token(tmp_path: Path) -> None:
    """What `new EventSource(url + "?token=…")` on another origin needs: the stream's answer names the origin."""
    async with stack(tmp_path, cors_origins=(_ORIGIN,)) as s:
        created = await s.client.post(f"{s.url}/v1/stream-tokens", json={"ttl_seconds": 60}, headers=s.headers)
        token = created.json()["token"]
        headers = {"Origin": _ORIGIN, "Accept": "text/event-stream", "Last-Event-ID": "0"}
        async with s.client.stream("GET", f"{s.url}/v1/events", params={"token": token}, headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["access-control-allow-origin"] == _ORIGIN
            assert "last-event-id" in _names(r.headers["access-control-expose-headers"])


async def test_an_allowed_origin_never_gets_the_dashboard_session_cookie_or_its_csrf_header(tmp_path: Path) -> None:
    """CORS lets other origins call the API with a key or a stream token, never with credentials: the dashboard's
    session cookie (and the X-CSRF-Token that goes with it) stays the dashboard's own."""
    async with stack(tmp_path, cors_origins=(_ORIGIN,)) as s:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/events"), ("DELETE", "/dashboard/session")):
            preflight = await s.client.options(
                f"{s.url}{path}",
                headers={"Origin": _ORIGIN, "Access-Control-Request-Method": method},
            )
            assert "access-control-allow-credentials" not in preflight.headers, (path, preflight.headers)
        csrf = await s.client.options(
            f"{s.url}/v1/jobs",
            headers={
                "Origin": _ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-csrf-token",
            },
        )
        assert "x-csrf-token" not in _names(csrf.headers.get("access-control-allow-headers", ""))
        session = await s.client.get(f"{s.url}/dashboard/session", headers={"Origin": _ORIGIN})
        assert "access-control-allow-credentials" not in session.headers
