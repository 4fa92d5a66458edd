"""`/dashboard` over real HTTP: its files and their Content-Security-Policy, and its session cookie, which stands for
an API key on /v1 routes (CSRF-checked on unsafe methods, ended by sign-out or by revoking the key)."""

from __future__ import annotations

import asyncio
import re
import time
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import msgspec
import pytest

from service.api.dashboard import DASHBOARD_DIR
from service.api.sessions import Sessions
from service.keys import revoke_key
from tests.harness import Stack, stack

JOB = {"model": "seedancee2/pro", "input": {"prompt": "a lighthouse at dusk", "duration": 5}}


async def sign_in(s: Stack, key: str | None = None, **headers: str) -> httpx.Response:
    response = await s.client.post(
        f"{s.url}/dashboard/session", data={"api_key": s.key if key is None else key}, headers=headers
    )
    s.client.cookies.clear()  # each test sends the cookie it means to, as a header
    return response


def session_cookie(response: httpx.Response) -> SimpleCookie:
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"reelay_session={value}"}


async def signed_in(s: Stack) -> tuple[dict[str, str], str]:
    """The Cookie header of a fresh session, and its CSRF value."""
    response = await sign_in(s)
    assert response.status_code == 200, response.text
    return cookie_header(session_cookie(response)["reelay_session"].value), response.json()["csrf_token"]


async def test_sign_in_sets_an_httponly_samesite_strict_session_cookie(seedance: Stack) -> None:
    response = await sign_in(seedance)
    assert response.status_code == 200, response.text
    morsel = session_cookie(response)["reelay_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # served over http here; see the https test below
    assert seedance.key not in response.headers["set-cookie"]  # the cookie names the key, never holds it
    body = response.json()
    assert body["key_name"] == "test"
    assert seedance.key.startswith(f"rlk_{body['key_id']}_")


async def test_behind_an_https_proxy_the_session_cookie_is_secure_and_sign_in_is_same_origin(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        # The public URL is what a TLS-terminating proxy in front of Reelay serves.
        s.app.state.ctx.settings = msgspec.structs.replace(s.settings, public_url="https://reelay.example")
        response = await sign_in(s, Origin="https://reelay.example")  # the page, as the proxy serves it
        assert response.status_code == 200, response.text
        assert session_cookie(response)["reelay_session"]["secure"] is True


async def test_a_wrong_key_does_not_sign_in(seedance: Stack) -> None:
    for key in ("rlk_nope", seedance.key[:-2] + "xx", ""):
        response = await sign_in(seedance, key)
        assert response.status_code == 401, key
        assert response.json()["error"]["code"] == "unauthorized"
        assert "set-cookie" not in response.headers


async def test_a_sign_in_posted_from_another_origin_is_refused(seedance: Stack) -> None:
    """Login CSRF: a page elsewhere must not sign a visitor in under the attacker's key."""
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = await sign_in(seedance, **headers)
        assert response.status_code == 403, headers
        assert response.json()["error"]["code"] == "csrf_failed"
        assert "set-cookie" not in response.headers
    assert (await sign_in(seedance, Origin=seedance.url, **{"Sec-Fetch-Site": "same-origin"})).status_code == 200


async def test_the_session_cookie_authenticates_v1_reads(seedance: Stack) -> None:
    cookies, _ = await signed_in(seedance)
    response = await seedance.client.get(f"{seedance.url}/v1/jobs", headers=cookies)
    assert response.status_code == 200, response.text
    assert (await seedance.client.get(f"{seedance.url}/v1/jobs")).status_code == 401


async def test_an_unsafe_request_with_the_cookie_needs_the_sessions_csrf_header(seedance: Stack) -> None:
    cookies, csrf = await signed_in(seedance)
    url = f"{seedance.url}/v1/jobs"
    for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": csrf[:-1]}):
        response = await seedance.client.post(url, json=JOB, headers={**cookies, **headers})
        assert response.status_code == 403, headers
        assert response.json()["error"]["code"] == "csrf_failed"
    assert await seedance.store.events_after(0) == []  # nothing was created
    response = await seedance.client.post(url, json=JOB, headers={**cookies, "X-CSRF-Token": csrf})
    assert response.status_code == 202, response.text
    cancel = await seedance.client.post(
        f"{url}/{response.json()['id']}/cancel", headers={**cookies, "X-CSRF-Token": csrf}
    )
    assert cancel.status_code == 200, cancel.text


async def test_another_sessions_csrf_value_is_refused(seedance: Stack) -> None:
    cookies, _ = await signed_in(seedance)
    _, other_csrf = await signed_in(seedance)
    response = await seedance.client.post(
        f"{seedance.url}/v1/jobs", json=JOB, headers={**cookies, "X-CSRF-Token": other_csrf}
    )
    assert response.status_code == 403


async def test_an_api_key_header_needs_no_csrf_value(seedance: Stack) -> None:
    """CSRF rides on cookies a browser adds by itself; a key in a header is sent only by whoever holds it."""
    response = await seedance.client.post(f"{seedance.url}/v1/jobs", json=JOB, headers=seedance.headers)
    assert response.status_code == 202


async def test_the_session_endpoint_gives_the_csrf_value_and_401_when_signed_out(seedance: Stack) -> None:
    cookies, csrf = await signed_in(seedance)
    response = await seedance.client.get(f"{seedance.url}/dashboard/session", headers=cookies)
    assert response.status_code == 200
    assert response.json()["csrf_token"] == csrf
    assert (await seedance.client.get(f"{seedance.url}/dashboard/session")).status_code == 401


async def test_a_forged_or_expired_cookie_is_refused(seedance: Stack) -> None:
    cookies, _ = await signed_in(seedance)
    payload, mac = cookies["Cookie"].removeprefix("reelay_session=").split(".")
    sessions = seedance.app.state.ctx.sessions
    stale = Sessions(sessions._secret.decode(), -10, time.time).issue(seedance.key.split("_")[1])[0]
    for value in (f"{payload}.{mac[:-2]}AA", f"{payload[:-2]}AA.{mac}", "garbage", stale):
        response = await seedance.client.get(f"{seedance.url}/v1/jobs", headers=cookie_header(value))
        assert response.status_code == 401, value
        assert "sign in again" in response.json()["error"]["message"]


async def test_a_cookie_with_non_ascii_bytes_is_401_not_500(seedance: Stack) -> None:
    """A cookie is whatever the client sends: bytes outside ASCII in the signature part are a bad cookie (401)."""
    cookies, _ = await signed_in(seedance)
    payload = cookies["Cookie"].removeprefix("reelay_session=").split(".")[0]
    for value in (f"{payload}.\u00e9", "\u00e9.\u00e9"):
        header = {b"Cookie": f"reelay_session={value}".encode("latin-1")}
        for path in ("/v1/jobs", "/dashboard/session"):
            response = await seedance.client.get(f"{seedance.url}{path}", headers=header)
            assert response.status_code == 401, (value, path, response.text)
            assert "sign in again" in response.json()["error"]["message"]


async def test_sign_out_clears_the_cookie(seedance: Stack) -> None:
    cookies, _ = await signed_in(seedance)
    response = await seedance.client.delete(f"{seedance.url}/dashboard/session", headers=cookies)
    assert response.status_code == 204
    cleared = session_cookie(response)["reelay_session"]
    assert cleared.value == ""
    assert cleared["max-age"] == "0"


async def test_a_revoked_keys_session_stops_working_within_the_key_cache_window(seedance: Stack) -> None:
    cookies, _ = await signed_in(seedance)
    assert (await seedance.client.get(f"{seedance.url}/v1/jobs", headers=cookies)).status_code == 200
    assert await revoke_key(seedance.store, seedance.key.split("_")[1], now=time.time())
    window = seedance.app.state.ctx.key_cache_seconds
    async with asyncio.timeout(window + 2):
        while (await seedance.client.get(f"{seedance.url}/v1/jobs", headers=cookies)).status_code != 401:
            await asyncio.sleep(0.1)
    assert (await seedance.client.get(f"{seedance.url}/dashboard/session", headers=cookies)).status_code == 401


async def test_sessions_are_signed_with_the_shared_server_secret(seedance: Stack) -> None:
    """Every replica reads the same stored secret, so a session made by one is accepted by all."""
    cookies, _ = await signed_in(seedance)
    secret = await seedance.store.server_secret("dashboard_sessions", new_value="not this one")
    assert Sessions(secret, 60, time.time).read(cookies["Cookie"].removeprefix("reelay_session=")) is not None


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/static/app.js", "/dashboard/static/nope.js"])
async def test_dashboard_responses_carry_a_strict_content_security_policy(seedance: Stack, path: str) -> None:
    response = await seedance.client.get(f"{seedance.url}{path}")
    policies = response.headers.get_list("content-security-policy")
    assert len(policies) == 1, policies
    directives = dict(d.strip().split(" ", 1) for d in policies[0].split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert "unsafe" not in policies[0]
    assert directives["frame-ancestors"] == "'none'"


async def test_the_dashboard_page_loads_only_its_own_files(seedance: Stack) -> None:
    response = await seedance.client.get(f"{seedance.url}/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    assert "style=" not in html
    for url in re.findall(r"(?:src|href)=\"([^\"#]+)\"", html):
        assert url.startswith(("/dashboard/static/", "data:")), url
        if url.startswith("/"):
            assert (await seedance.client.get(f"{seedance.url}{url}")).status_code == 200, url


def test_every_dashboard_module_imports_only_dashboard_files() -> None:
    """No CDN, no bare package names: each import is a relative path to a file that exists."""
    for script in DASHBOARD_DIR.glob("*.js"):
        for target in re.findall(r"^import .* from \"([^\"]+)\";$", script.read_text(), re.MULTILINE):
            assert target.startswith("./"), (script.name, target)
            assert (DASHBOARD_DIR / target).is_file(), (script.name, target)
