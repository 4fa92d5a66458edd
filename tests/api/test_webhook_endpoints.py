"""Caller webhooks over real HTTP: the key's secret, `/v1/webhook-endpoints` and the attempt log (deliveries,
test, resend, recover).

One Reelay serves the module; each test works under an API key of its own, so endpoint caps and lists never mix.
These tests are about the API, not about sending: the receiver is a black hole on loopback (it accepts connections
and never answers, so an attempt in flight logs nothing while a test runs), and attempts are logged through the
store's `finish_attempts`, as the deliverer logs them. A second Reelay, without REELAY_WEBHOOK_ALLOW_PRIVATE, checks
the refusal of private targets.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

from sandbox import SandboxKnobs
from service.keys import create_key
from service.timestamps import from_iso, to_iso
from service.vocabulary import EVENT_TYPES
from storage import AttemptRecord, AttemptResult, DeliveryStatus
from tests.harness import Stack, stack, url_of
from tests.ports import bind

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENDPOINTS = "/v1/webhook-endpoints"
PUBLIC = "https://receiver.invalid/reelay"
MAX_ENDPOINTS = 3
DAY = 86400.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    knobs = SandboxKnobs(processing_after_s=30, complete_after_s=60)  # jobs stay running
    black_hole = bind()
    black_hole.listen(1024)  # the kernel accepts; nobody reads or answers
    try:
        async with stack(
            tmp_path_factory.mktemp("endpoints"),
            knobs=knobs,
            webhook_max_endpoints=MAX_ENDPOINTS,
            webhook_allow_private=True,
            webhook_timeout_seconds=50.0,  # longer than the module runs: no attempt ends meanwhile
        ) as st:
            st.extra["receiver"] = url_of(black_hole) + "/reelay"
            yield st
    finally:
        black_hole.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def strict(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """A Reelay with the default guard: private and loopback receivers refused."""
    async with stack(tmp_path_factory.mktemp("strict")) as st:
        yield st


@dataclass
class Caller:
    """An API key of its own on the module's Reelay."""

    s: Stack
    key_id: str
    headers: dict[str, str]
    receiver: str

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.s.client.request(
            method, self.s.url + path, headers={**self.headers, **(headers or {})}, **kwargs
        )

    async def endpoint(self, url: str | None = None, **fields: Any) -> dict[str, Any]:
        response = await self.call("POST", ENDPOINTS, json={"url": url or self.receiver, **fields})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def job(self) -> dict[str, Any]:
        body = {"model": "seedancee2/pro", "input": {"prompt": "waves", "duration": 5}}
        response = await self.call("POST", "/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def job_deliveries(self, job_id: str) -> list[dict[str, Any]]:
        response = await self.call("GET", f"/v1/jobs/{job_id}/deliveries")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]
        return found

    async def delivered_job(self) -> dict[str, Any]:
        """A new job's one delivery (its `job.created`, to this caller's endpoint that takes only that type)."""
        job = await self.job()
        (delivery,) = await self.job_deliveries(job["id"])
        return delivery

    async def endpoint_deliveries(self, endpoint_id: str, **params: Any) -> dict[str, Any]:
        response = await self.call("GET", f"{ENDPOINTS}/{endpoint_id}/deliveries", params=params)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page


@pytest_asyncio.fixture(loop_scope="module")
async def caller(s: Stack) -> Caller:
    record, key = await create_key(s.store, "webhooks", now=time.time())
    return Caller(s, record.id, {"Authorization": f"Bearer {key}"}, s.extra["receiver"])


@pytest_asyncio.fixture(loop_scope="module")
async def other(s: Stack) -> Caller:
    record, key = await create_key(s.store, "someone else", now=time.time())
    return Caller(s, record.id, {"Authorization": f"Bearer {key}"}, s.extra["receiver"])


async def attempt(s: Stack, delivery_id: str, status: str, code: int | None = 500) -> None:
    """Log one attempt of a delivery and move it to `status`, as the deliverer does."""
    now = time.time()
    logged = AttemptRecord(
        delivery_id=delivery_id, attempted_at=to_iso(now), duration_ms=12.5, status_code=code, response_body="boom"
    )
    result = AttemptResult(attempt=logged, status=status, at=now)
    await s.store.finish_attempts([result], disable_after_seconds=s.settings.webhook_disable_after_seconds)


async def next_millisecond(after: str) -> None:
    """Wait until the clock reads past the ISO instant `after`, so the next record's created_at is later."""
    while to_iso(time.time()) <= after:
        await asyncio.sleep(0.001)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["details"], dict)
    return error


def is_webhook_secret(secret: str) -> bool:
    return secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24


# -- the key's secret ---------------------------------------------------------------------------------------


async def test_the_key_secret_is_made_once_and_shown_again(caller: Caller) -> None:
    first = (await caller.call("GET", "/v1/webhook-secret")).json()
    again = (await caller.call("GET", "/v1/webhook-secret")).json()
    assert is_webhook_secret(first["secret"])
    assert first == again == {"secret": first["secret"], "previous_secret_expires_at": None}


async def test_rotating_the_key_secret_keeps_the_previous_one_signing_for_24_hours(s: Stack, caller: Caller) -> None:
    old = (await caller.call("GET", "/v1/webhook-secret")).json()["secret"]
    before = time.time()
    response = await caller.call("POST", "/v1/webhook-secret/rotate")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert is_webhook_secret(rotated["secret"])
    assert rotated["secret"] != old
    expires = from_iso(rotated["previous_secret_expires_at"]).timestamp()
    assert before + DAY - 1 <= expires <= time.time() + DAY + 1
    assert (await caller.call("GET", "/v1/webhook-secret")).json() == rotated
    signing = await s.store.webhook_secret(caller.key_id, new_secret="whsec_unused")
    assert signing.signing(time.time()) == (rotated["secret"], old)
    assert signing.signing(expires + 1) == (rotated["secret"],)


async def test_a_first_rotation_replaces_a_secret_and_never_nothing(caller: Caller) -> None:
    rotated = (await caller.call("POST", "/v1/webhook-secret/rotate")).json()
    assert is_webhook_secret(rotated["secret"])
    assert rotated["previous_secret_expires_at"] is not None


# -- endpoints ----------------------------------------------------------------------------------------------


async def test_an_endpoint_is_created_with_its_secret_shown_once(caller: Caller) -> None:
    created = await caller.endpoint(events=["job.succeeded", "job.failed", "job.succeeded"], description="prod")
    assert created["id"].startswith("we_")
    assert len(created["id"]) == 29
    assert is_webhook_secret(created["secret"])
    assert created["url"] == caller.receiver
    assert created["events"] == ["job.succeeded", "job.failed"]  # repeats dropped
    assert (created["description"], created["disabled"], created["disabled_reason"]) == ("prod", False, None)
    shown = (await caller.call("GET", f"{ENDPOINTS}/{created['id']}")).json()
    assert shown == {k: v for k, v in created.items() if k != "secret"}
    listed = (await caller.call("GET", ENDPOINTS)).json()
    assert listed == {"data": [shown]}


async def test_an_endpoint_takes_every_event_type_by_default(caller: Caller) -> None:
    created = await caller.endpoint()
    assert (created["events"], created["description"]) == (["*"], "")


async def test_endpoints_are_listed_oldest_first_and_only_the_callers(caller: Caller, other: Caller) -> None:
    ids = [(await caller.endpoint(description=str(i)))["id"] for i in range(MAX_ENDPOINTS)]
    await other.endpoint()
    assert [e["id"] for e in (await caller.call("GET", ENDPOINTS)).json()["data"]] == ids


async def test_more_endpoints_than_the_cap_is_409_too_many_endpoints(caller: Caller) -> None:
    first = await caller.endpoint()
    for _ in range(MAX_ENDPOINTS - 1):
        await caller.endpoint()
    error = assert_error(await caller.call("POST", ENDPOINTS, json={"url": PUBLIC}), 409, "too_many_endpoints")
    assert error["details"] == {"max_endpoints": MAX_ENDPOINTS}
    assert (await caller.call("DELETE", f"{ENDPOINTS}/{first['id']}")).status_code == 204
    await caller.endpoint()  # a deleted endpoint frees its place


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://127.0.0.1:8080/hook", "loopback", id="loopback-ip"),
        pytest.param("http://localhost/hook", "loopback", id="localhost"),
        pytest.param("https://10.1.2.3/hook", "private", id="private"),
        pytest.param("http://169.254.169.254/latest", "link_local", id="cloud-metadata"),
        pytest.param("http://[::1]/hook", "loopback", id="loopback-v6"),
        pytest.param("ftp://example.com/hook", "unsupported_scheme", id="ftp"),
        pytest.param("example.com/hook", "unsupported_scheme", id="relative"),
    ],
)
async def test_a_url_reelay_will_not_send_to_is_400_invalid_webhook_url_naming_why(
    strict: Stack, url: str, reason: str
) -> None:
    response = await strict.client.post(strict.url + ENDPOINTS, json={"url": url}, headers=strict.headers)
    error = assert_error(response, 400, "invalid_webhook_url")
    assert error["details"]["reason"] == reason
    assert error["details"]["field"] == "url"
    assert error["message"].startswith("url: ")
    assert (await strict.client.get(strict.url + ENDPOINTS, headers=strict.headers)).json()["data"] == []


async def test_a_loopback_url_is_accepted_when_private_targets_are_allowed(caller: Caller) -> None:
    assert (await caller.endpoint("http://127.0.0.1:9/hook"))["url"] == "http://127.0.0.1:9/hook"
    link_local = {"url": "http://169.254.169.254/latest"}  # cloud metadata stays refused
    assert_error(await caller.call("POST", ENDPOINTS, json=link_local), 400, "invalid_webhook_url")


async def test_an_unknown_event_type_is_400_naming_it_and_listing_the_known_ones(caller: Caller) -> None:
    response = await caller.call("POST", ENDPOINTS, json={"url": PUBLIC, "events": ["job.succeeded", "job.done"]})
    error = assert_error(response, 400, "invalid_request")
    assert "job.done" in error["message"]
    assert error["details"]["unknown"] == ["job.done"]
    assert error["details"]["allowed"] == [*EVENT_TYPES, "*"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"url": PUBLIC, "colour": "blue"}, "colour", id="unknown-field"),
        pytest.param({"events": ["*"]}, "url", id="no-url"),
        pytest.param({"url": PUBLIC, "events": []}, "events", id="no-events"),
        pytest.param({"url": PUBLIC, "events": ["*", "job.failed"]}, "events", id="star-and-more"),
        pytest.param({"url": PUBLIC, "events": "job.failed"}, "events", id="events-not-a-list"),
        pytest.param({"url": PUBLIC, "events": ["job.failed"] * 21}, "events", id="too-many-events"),
        pytest.param({"url": PUBLIC, "description": "x" * 501}, "description", id="long-description"),
        pytest.param({"url": "https://receiver.invalid/" + "x" * 2048}, "url", id="long-url"),
        pytest.param({"url": "https://receiver.invalid/a b"}, "url", id="space-in-url"),
        pytest.param({"url": 7}, "url", id="url-not-a-string"),
    ],
)
async def test_a_bad_endpoint_body_is_400_naming_the_field(caller: Caller, body: dict[str, Any], field: str) -> None:
    error = assert_error(await caller.call("POST", ENDPOINTS, json=body), 400, "invalid_request")
    assert field in error["message"]
    assert (await caller.call("GET", ENDPOINTS)).json()["data"] == []


async def test_an_endpoint_body_not_declared_as_json_is_415(caller: Caller) -> None:
    raw = msgspec.json.encode({"url": PUBLIC})
    response = await caller.call(
        "POST", ENDPOINTS, content=raw, headers={**caller.headers, "content-type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_media_type")


async def test_an_unknown_query_parameter_is_400(caller: Caller) -> None:
    error = assert_error(await caller.call("GET", ENDPOINTS, params={"limit": "5"}), 400, "invalid_request")
    assert error["details"]["parameter"] == "limit"


async def test_the_webhook_routes_need_an_api_key(s: Stack) -> None:
    for method, path in [("GET", "/v1/webhook-secret"), ("POST", ENDPOINTS), ("POST", "/v1/deliveries/msg_x/resend")]:
        assert_error(await s.client.request(method, s.url + path), 401, "unauthorized")


async def test_a_patch_changes_only_the_fields_it_gives(caller: Caller) -> None:
    created = await caller.endpoint(events=["job.failed"], description="before")
    path = f"{ENDPOINTS}/{created['id']}"
    response = await caller.call("PATCH", path, json={"url": "https://other.invalid/x", "events": ["*"]})
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["url"], changed["events"], changed["description"]) == ("https://other.invalid/x", ["*"], "before")
    assert "secret" not in changed
    assert changed["updated_at"] >= created["updated_at"]
    changed = (await caller.call("PATCH", path, json={"description": "after", "url": None})).json()
    assert (changed["url"], changed["description"]) == ("https://other.invalid/x", "after")


async def test_a_patch_checks_the_url_and_events_again(strict: Stack) -> None:
    created = (await strict.client.post(strict.url + ENDPOINTS, json={"url": PUBLIC}, headers=strict.headers)).json()
    url = f"{strict.url}{ENDPOINTS}/{created['id']}"
    for change, code in [
        ({"url": "http://127.0.0.1/x"}, "invalid_webhook_url"),
        ({"events": ["job.nope"]}, "invalid_request"),
        ({"secret": "whsec_mine"}, "invalid_request"),
    ]:
        error = assert_error(await strict.client.patch(url, json=change, headers=strict.headers), 400, code)
        assert next(iter(change)) in error["message"]
    shown = (await strict.client.get(url, headers=strict.headers)).json()
    assert shown == {k: v for k, v in created.items() if k != "secret"}


async def test_disabling_an_endpoint_fails_its_pending_deliveries_and_enabling_clears_the_reason(
    caller: Caller,
) -> None:
    endpoint = await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    assert delivery["status"] == "pending"
    path = f"{ENDPOINTS}/{endpoint['id']}"
    disabled = (await caller.call("PATCH", path, json={"disabled": True})).json()
    assert (disabled["disabled"], disabled["disabled_reason"]) == (True, "by_request")
    (failed,) = (await caller.endpoint_deliveries(endpoint["id"]))["data"]
    assert (failed["id"], failed["status"]) == (delivery["id"], "failed")
    enabled = (await caller.call("PATCH", path, json={"disabled": False})).json()
    assert (enabled["disabled"], enabled["disabled_reason"]) == (False, None)


async def test_a_deleted_endpoint_is_gone_and_its_deliveries_stay_readable(caller: Caller) -> None:
    endpoint = await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    path = f"{ENDPOINTS}/{endpoint['id']}"
    response = await caller.call("DELETE", path)
    assert (response.status_code, response.content) == (204, b"")
    assert_error(await caller.call("GET", path), 404, "not_found")
    assert_error(await caller.call("DELETE", path), 404, "not_found")
    assert (await caller.call("GET", ENDPOINTS)).json()["data"] == []
    (kept,) = await caller.job_deliveries(delivery["job_id"])
    assert (kept["id"], kept["endpoint_id"], kept["status"]) == (delivery["id"], endpoint["id"], "failed")


async def test_rotating_an_endpoint_secret_shows_the_new_one_and_keeps_the_old_for_24_hours(
    s: Stack, caller: Caller
) -> None:
    created = await caller.endpoint()
    before = time.time()
    response = await caller.call("POST", f"{ENDPOINTS}/{created['id']}/rotate-secret")
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert is_webhook_secret(rotated["secret"])
    assert rotated["secret"] != created["secret"]
    assert {k: v for k, v in rotated.items() if k not in {"secret", "updated_at"}} == {
        k: v for k, v in created.items() if k not in {"secret", "updated_at"}
    }
    stored = await s.store.get_endpoint(caller.key_id, created["id"])
    assert stored is not None
    assert stored.signing.previous == created["secret"]
    assert stored.signing.previous_expires_at is not None
    assert before + DAY - 1 <= stored.signing.previous_expires_at <= time.time() + DAY + 1
    assert stored.signing.signing(time.time()) == (rotated["secret"], created["secret"])
    assert "secret" not in (await caller.call("GET", f"{ENDPOINTS}/{created['id']}")).json()


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("GET", "", None, id="get"),
        pytest.param("PATCH", "", {"description": "mine now"}, id="patch"),
        pytest.param("DELETE", "", None, id="delete"),
        pytest.param("POST", "/rotate-secret", None, id="rotate-secret"),
        pytest.param("POST", "/test", None, id="test"),
        pytest.param("GET", "/deliveries", None, id="deliveries"),
        pytest.param("POST", "/recover", {"since": "2025-01-01", "until": "2025-01-02"}, id="recover"),
    ],
)
async def test_another_keys_endpoint_is_404_and_untouched(
    s: Stack, caller: Caller, other: Caller, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    created = await caller.endpoint()
    before = await s.store.get_endpoint(caller.key_id, created["id"])
    path = f"{ENDPOINTS}/{created['id']}{suffix}"
    assert_error(await other.call(method, path, **({"json": body} if body else {})), 404, "not_found")
    assert await s.store.get_endpoint(caller.key_id, created["id"]) == before
    assert (await caller.endpoint_deliveries(created["id"]))["data"] == []


# -- test deliveries and the attempt log --------------------------------------------------------------------


async def test_a_test_delivery_is_recorded_pending_with_its_payload(s: Stack, caller: Caller) -> None:
    endpoint = await caller.endpoint(events=["job.failed"])  # a test is sent whatever the filter
    response = await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/test")
    assert response.status_code == 202, response.text
    delivery = response.json()
    assert delivery["id"].startswith("msg_")
    assert (delivery["event_type"], delivery["status"], delivery["endpoint_id"]) == (
        "webhook.test",
        "pending",
        endpoint["id"],
    )
    assert (delivery["job_id"], delivery["event_id"], delivery["url"], delivery["attempts"]) == (
        None,
        None,
        caller.receiver,
        [],
    )
    listed = (await caller.endpoint_deliveries(endpoint["id"], status="pending"))["data"]
    assert [d["id"] for d in listed] == [delivery["id"]]
    stored = await s.store.get_delivery(caller.key_id, delivery["id"])
    assert stored is not None
    assert stored.delivery.payload is not None
    assert msgspec.json.decode(stored.delivery.payload) == {
        "endpoint_id": endpoint["id"],
        "message": "a test delivery from Reelay",
    }


async def test_a_test_of_a_disabled_endpoint_is_409(caller: Caller) -> None:
    endpoint = await caller.endpoint()
    await caller.call("PATCH", f"{ENDPOINTS}/{endpoint['id']}", json={"disabled": True})
    error = assert_error(await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/test"), 409, "endpoint_disabled")
    assert error["details"] == {"endpoint_id": endpoint["id"], "disabled_reason": "by_request"}
    assert (await caller.endpoint_deliveries(endpoint["id"]))["data"] == []


async def test_an_endpoints_deliveries_page_newest_first_and_filter_by_status(s: Stack, caller: Caller) -> None:
    endpoint = await caller.endpoint()
    ids = [(await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/test")).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await caller.endpoint_deliveries(endpoint["id"], limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["data"]) <= 2
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert not cursor.startswith("msg_")  # opaque
    assert seen == list(reversed(ids))
    await attempt(s, ids[1], DeliveryStatus.FAILED, code=503)
    await attempt(s, ids[3], DeliveryStatus.SUCCEEDED, code=200)
    (failed,) = (await caller.endpoint_deliveries(endpoint["id"], status="failed"))["data"]
    assert (failed["id"], failed["attempts_count"], failed["last_status"]) == (ids[1], 1, 503)
    assert failed["attempts"] == [
        {
            "attempted_at": failed["attempts"][0]["attempted_at"],
            "duration_ms": 12.5,
            "status_code": 503,
            "response_body": "boom",
            "error": None,
        }
    ]
    assert [d["id"] for d in (await caller.endpoint_deliveries(endpoint["id"], status="succeeded"))["data"]] == [ids[3]]
    pending = (await caller.endpoint_deliveries(endpoint["id"], status="pending"))["data"]
    assert [d["id"] for d in pending] == [ids[4], ids[2], ids[0]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"status": "lost"}, "status", id="unknown-status"),
        pytest.param({"cursor": "bm90LWEtY3Vyc29y"}, "cursor", id="foreign-cursor"),
        pytest.param({"limit": "0"}, "limit", id="limit-0"),
        pytest.param({"limit": "101"}, "limit", id="limit-101"),
        pytest.param({"state": "failed"}, "state", id="unknown-parameter"),
    ],
)
async def test_bad_delivery_list_parameters_are_400(caller: Caller, params: dict[str, str], field: str) -> None:
    endpoint = await caller.endpoint()
    response = await caller.call("GET", f"{ENDPOINTS}/{endpoint['id']}/deliveries", params=params)
    error = assert_error(response, 400, "invalid_request")
    assert field in error["message"]


async def test_a_jobs_deliveries_show_each_matching_endpoints_delivery(caller: Caller) -> None:
    created = await caller.endpoint(events=["job.created"])
    ignored = await caller.endpoint(events=["job.failed"])
    job = await caller.job()
    (delivery,) = await caller.job_deliveries(job["id"])
    assert delivery["id"].startswith("msg_")
    assert (delivery["job_id"], delivery["endpoint_id"], delivery["event_type"], delivery["status"]) == (
        job["id"],
        created["id"],
        "job.created",
        "pending",
    )
    assert isinstance(delivery["event_id"], int)
    assert (delivery["url"], delivery["attempts_count"], delivery["attempts"]) == (caller.receiver, 0, [])
    assert (await caller.endpoint_deliveries(ignored["id"]))["data"] == []


async def test_another_keys_job_deliveries_are_404(caller: Caller, other: Caller) -> None:
    await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    assert_error(await other.call("GET", f"/v1/jobs/{delivery['job_id']}/deliveries"), 404, "not_found")
    assert_error(await other.call("GET", "/v1/jobs/job_nope/deliveries"), 404, "not_found")


# -- resend and recover -------------------------------------------------------------------------------------


async def test_resending_a_failed_delivery_keeps_its_id_and_its_attempts(s: Stack, caller: Caller) -> None:
    await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    await attempt(s, delivery["id"], DeliveryStatus.FAILED)
    response = await caller.call("POST", f"/v1/deliveries/{delivery['id']}/resend")
    assert response.status_code == 202, response.text
    resent = response.json()
    assert (resent["id"], resent["status"], resent["attempts_count"]) == (delivery["id"], "pending", 1)
    assert [a["status_code"] for a in resent["attempts"]] == [500]
    assert resent["next_attempt_at"] is not None
    (shown,) = await caller.job_deliveries(delivery["job_id"])
    assert (shown["id"], shown["status"]) == (delivery["id"], "pending")


async def test_resending_an_unknown_or_another_keys_delivery_is_404(s: Stack, caller: Caller, other: Caller) -> None:
    await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    await attempt(s, delivery["id"], DeliveryStatus.FAILED)
    assert_error(await other.call("POST", f"/v1/deliveries/{delivery['id']}/resend"), 404, "not_found")
    assert_error(await caller.call("POST", "/v1/deliveries/msg_01JZZZZZZZZZZZZZZZZZZZZZZZ/resend"), 404, "not_found")
    (shown,) = await caller.job_deliveries(delivery["job_id"])
    assert shown["status"] == "failed"


async def test_resending_to_a_disabled_or_deleted_endpoint_is_409(s: Stack, caller: Caller) -> None:
    endpoint = await caller.endpoint(events=["job.created"])
    delivery = await caller.delivered_job()
    await attempt(s, delivery["id"], DeliveryStatus.FAILED)
    resend = f"/v1/deliveries/{delivery['id']}/resend"
    await caller.call("PATCH", f"{ENDPOINTS}/{endpoint['id']}", json={"disabled": True})
    assert_error(await caller.call("POST", resend), 409, "endpoint_disabled")
    await caller.call("DELETE", f"{ENDPOINTS}/{endpoint['id']}")
    error = assert_error(await caller.call("POST", resend), 409, "endpoint_deleted")
    assert error["details"] == {"endpoint_id": endpoint["id"]}
    (shown,) = await caller.job_deliveries(delivery["job_id"])
    assert shown["status"] == "failed"


async def test_recover_resends_only_the_failed_deliveries_created_in_the_range(s: Stack, caller: Caller) -> None:
    endpoint = await caller.endpoint(events=["job.created"])
    neighbour = await caller.endpoint(events=["job.created"])
    deliveries = []
    for _ in range(4):  # each job: one delivery to each endpoint, each job a millisecond after the last
        job = await caller.job()
        found = {d["endpoint_id"]: d for d in await caller.job_deliveries(job["id"])}
        deliveries.append((found[endpoint["id"]], found[neighbour["id"]]))
        await next_millisecond(found[endpoint["id"]]["created_at"])
    (early, _), (failed, other_failed), (succeeded, _), (last, _) = deliveries
    for delivery_id in (early["id"], failed["id"], other_failed["id"], last["id"]):
        await attempt(s, delivery_id, DeliveryStatus.FAILED)
    await attempt(s, succeeded["id"], DeliveryStatus.SUCCEEDED, code=200)
    window = {"since": failed["created_at"], "until": to_iso(time.time() + 60)}
    response = await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/recover", json=window)
    assert response.status_code == 202, response.text
    assert response.json() == {"resent": 2}
    statuses = {d["id"]: d["status"] for d in (await caller.endpoint_deliveries(endpoint["id"]))["data"]}
    assert statuses == {
        early["id"]: "failed",
        failed["id"]: "pending",
        succeeded["id"]: "succeeded",
        last["id"]: "pending",
    }
    assert [d["status"] for d in (await caller.endpoint_deliveries(neighbour["id"], status="failed"))["data"]] == [
        "failed"
    ]
    assert (await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/recover", json=window)).json() == {"resent": 0}


@pytest.mark.parametrize(
    ("body", "mention"),
    [
        pytest.param({"since": "2025-07-02", "until": "2025-07-01"}, "before", id="reversed"),
        pytest.param({"since": "2025-07-01", "until": "2025-07-01"}, "before", id="empty"),
        pytest.param({"since": "2025-07-01", "until": "2025-07-16"}, "14 days", id="too-long"),
        pytest.param({"since": "yesterday", "until": "2025-07-01"}, "since", id="not-a-date"),
        pytest.param({"since": "2025-07-01"}, "until", id="no-until"),
        pytest.param({"since": "2025-07-01", "until": "2025-07-02", "status": "failed"}, "status", id="unknown-field"),
    ],
)
async def test_a_bad_recover_range_is_400(caller: Caller, body: dict[str, Any], mention: str) -> None:
    endpoint = await caller.endpoint()
    error = assert_error(
        await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/recover", json=body), 400, "invalid_request"
    )
    assert mention in error["message"]


async def test_recover_of_a_disabled_endpoint_is_409(caller: Caller) -> None:
    endpoint = await caller.endpoint()
    await caller.call("PATCH", f"{ENDPOINTS}/{endpoint['id']}", json={"disabled": True})
    window = {"since": "2025-07-01", "until": "2025-07-14T23:59:59Z"}
    assert_error(
        await caller.call("POST", f"{ENDPOINTS}/{endpoint['id']}/recover", json=window), 409, "endpoint_disabled"
    )
