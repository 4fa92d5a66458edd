"""Bad input over real HTTP: always a 4xx in the error shape, never a 5xx, and the service stays healthy.

One Reelay (with the Seedancee2 emulator) serves the whole module, so the last test checks health and a
normal job on the very server that took every bad request above it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio

from reelay_signing import sign_header
from service.keys import create_key, revoke_key
from tests.harness import Stack, stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1 << 20
JOBS = "/v1/jobs"
WEBHOOK = "/webhooks/seedancee2"
SIGNATURE = "x-seedancee2-signature"
ERROR_KEYS = {"code", "message", "details"}
UNKNOWN_KEY = "rlk_0123456789abcdef_" + "x" * 43
Headers = list[tuple[bytes, bytes]]


def body_of(model: str = "seedancee2/pro", **input: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "waves on black rocks", **input}}


def with_meta(metadata: Any) -> dict[str, Any]:
    return {**body_of(), "metadata": metadata}


@dataclass(frozen=True)
class Case:
    """One bad request and the answer it must get."""

    id: str
    status: int
    code: str
    method: str = "POST"
    path: str = JOBS
    data: Any = None
    raw: bytes | None = None
    content_type: bytes | None = b"application/json"
    headers: Headers = field(default_factory=list)
    auth: bool = True
    mentions: Sequence[str] = ()  # the message must name these (a field, the allowed values)

    def request_headers(self, key: str) -> Headers:
        headers = list(self.headers)
        if self.auth:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        if self.content_type is not None and (self.raw is not None or self.data is not None):
            headers.append((b"content-type", self.content_type))
        return headers

    def content(self) -> bytes | None:
        if self.raw is not None:
            return self.raw
        return None if self.data is None else json.dumps(self.data).encode()


def params(cases: Sequence[Case]) -> list[Any]:
    return [pytest.param(case, id=case.id) for case in cases]


def bad_request(id: str, *, mentions: Sequence[str] = (), **kwargs: Any) -> Case:
    return Case(id=id, status=400, code="invalid_request", mentions=mentions, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The status, JSON content, and exactly the error shape (`details` always an object); returns `error`."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), error
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["details"], dict), error  # always an object, possibly empty
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error


async def send(s: Stack, case: Case) -> httpx.Response:
    return await s.client.request(
        case.method, s.url + case.path, content=case.content(), headers=case.request_headers(s.key)
    )


async def check(s: Stack, case: Case) -> dict[str, Any]:
    error = assert_error(await send(s, case), case.status, case.code)
    for word in case.mentions:
        assert word in error["message"], (word, error["message"])
    return error


# -- the server ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with stack(tmp_path_factory.mktemp("bad_input")) as running:
        yield running


async def pending_job(s: Stack) -> dict[str, Any]:
    """A job the emulator has accepted and will not finish during the test (its own timings are slow)."""
    fast = await s.sandbox("seedancee2", "GET", "/_sandbox/knobs")
    await s.sandbox(
        "seedancee2", "PUT", "/_sandbox/knobs", json={**fast, "processing_after_s": 3600, "complete_after_s": 3600}
    )
    try:
        job = await s.accepted((await s.submit())["id"], timeout=10)
    finally:
        await s.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=fast)
    assert job["status"] == "queued", job
    return job


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pending(s: Stack) -> dict[str, Any]:
    return await pending_job(s)


async def snapshot(s: Stack, job_id: str) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The job as the API shows it, and its logged events."""
    events = await s.store.events_after(0, job_id=job_id)
    return await s.job(job_id), [(e.id, e.type) for e in events]


# -- malformed JSON and the wrong content type ---------------------------------------------------

GOOD = json.dumps(body_of()).encode()

MALFORMED = [
    bad_request("truncated", raw=b'{"model": "seedancee2/pro", "input": {'),
    bad_request("trailing-garbage", raw=GOOD + b" xx"),
    bad_request("two-documents", raw=GOOD + GOOD),
    bad_request("array", raw=b"[]"),
    bad_request("null", raw=b"null"),
    bad_request("bare-string", raw=b'"seedancee2/pro"'),
    bad_request("bare-number", raw=b"1"),
    bad_request("empty-body", raw=b""),
    bad_request("empty-object", raw=b"{}", mentions=["model"]),
    bad_request("nan", raw=b'{"model":"seedancee2/pro","input":{"prompt":"x","seed":NaN}}'),
    bad_request("single-quotes", raw=b"{'model': 'seedancee2/pro'}"),
    bad_request("utf8-bom", raw=b"\xef\xbb\xbf" + GOOD),
    bad_request("utf16", raw=GOOD.decode().encode("utf-16")),
    bad_request("gzip-claimed-not-gzip", raw=b"\x1f\x8bgarbage", headers=[(b"content-encoding", b"gzip")]),
    bad_request(
        "deep-nesting", raw=GOOD[:-2] + b',"provider_options":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}}"
    ),
    bad_request(
        "huge-integer-literal", raw=b'{"model":"seedancee2/pro","input":{"prompt":"x","seed":1' + b"0" * 5000 + b"}}"
    ),
    bad_request("float-overflow", raw=b'{"model":"seedancee2/pro","input":{"prompt":"x","seed":1e400}}'),
    bad_request("text-plain-not-json", raw=b"make me a video", content_type=b"text/plain"),
    bad_request(
        "form-encoded-form-body",
        raw=b"model=seedancee2%2Fpro&prompt=x",
        content_type=b"application/x-www-form-urlencoded",
    ),
    bad_request("multipart-body", raw=b"--b\r\n\r\nx\r\n--b--\r\n", content_type=b"multipart/form-data; boundary=b"),
    Case("text-plain-json-body", 415, "unsupported_media_type", raw=GOOD, content_type=b"text/plain"),
    Case(
        "form-encoded-json-body",
        415,
        "unsupported_media_type",
        raw=GOOD,
        content_type=b"application/x-www-form-urlencoded",
    ),
    Case("xml-json-body", 415, "unsupported_media_type", raw=GOOD, content_type=b"application/xml"),
]


@pytest.mark.parametrize("case", params(MALFORMED))
async def test_malformed_body_is_refused(s: Stack, case: Case) -> None:
    await check(s, case)


# -- wrong types -----------------------------------------------------------------------------------

WRONG_TYPES = [
    bad_request("prompt-number", data={"model": "seedancee2/pro", "input": {"prompt": 5}}, mentions=["input.prompt"]),
    bad_request("prompt-null", data={"model": "seedancee2/pro", "input": {"prompt": None}}, mentions=["input.prompt"]),
    bad_request("prompt-empty", data=body_of(prompt=""), mentions=["input.prompt"]),
    bad_request("prompt-too-long", data=body_of(prompt="x" * 5001), mentions=["input.prompt"]),
    bad_request("duration-string", data=body_of(duration="5"), mentions=["input.duration"]),
    bad_request("duration-float", data=body_of(duration=5.5), mentions=["input.duration"]),
    bad_request("duration-bool", data=body_of(duration=True), mentions=["input.duration"]),
    bad_request("duration-negative", data=body_of(duration=-5), mentions=["input.duration"]),
    bad_request("duration-huge", data=body_of(duration=10**30), mentions=["input.duration"]),
    bad_request("seed-string", data=body_of(seed="1"), mentions=["input.seed"]),
    bad_request("seed-negative", data=body_of(seed=-1), mentions=["input.seed"]),
    bad_request("seed-huge", data=body_of(seed=10**30), mentions=["input.seed"]),
    bad_request("generate-audio-string", data=body_of(generate_audio="true"), mentions=["input.generate_audio"]),
    bad_request("resolution-number", data=body_of(resolution=720), mentions=["input.resolution"]),
    bad_request(
        "reference-images-string", data=body_of(reference_images="https://x/a.png"), mentions=["input.reference_images"]
    ),
    bad_request("reference-images-numbers", data=body_of(reference_images=[1]), mentions=["input.reference_images"]),
    bad_request(
        "reference-images-17",
        data=body_of(reference_images=["https://x/a.png"] * 17),
        mentions=["input.reference_images"],
    ),
    bad_request("provider-options-array", data=body_of(provider_options=[]), mentions=["input.provider_options"]),
    bad_request("metadata-value-number", data=with_meta({"a": 1}), mentions=["metadata"]),
    bad_request("metadata-value-null", data=with_meta({"a": None}), mentions=["metadata"]),
    bad_request("metadata-nested", data=with_meta({"a": {"b": "c"}}), mentions=["metadata"]),
    bad_request("metadata-array", data=with_meta(["a"]), mentions=["metadata"]),
    bad_request("metadata-bad-key", data=with_meta({"a b": "c"}), mentions=["metadata"]),
    bad_request("metadata-empty-key", data=with_meta({"": "c"}), mentions=["metadata"]),
    bad_request("metadata-51-keys", data=with_meta({f"k{i}": "v" for i in range(51)}), mentions=["metadata"]),
    bad_request("metadata-value-too-long", data=with_meta({"a": "v" * 501}), mentions=["metadata"]),
    bad_request("input-missing", data={"model": "seedancee2/pro"}, mentions=["input"]),
    bad_request("input-array", data={"model": "seedancee2/pro", "input": []}, mentions=["input"]),
    bad_request("input-string", data={"model": "seedancee2/pro", "input": "waves"}, mentions=["input"]),
    bad_request("model-missing", data={"input": {"prompt": "x"}}, mentions=["model"]),
    bad_request("model-number", data={"model": 1, "input": {"prompt": "x"}}, mentions=["model"]),
    bad_request("model-too-long", data=body_of(model="m" * 201), mentions=["model"]),
    bad_request("unknown-top-level-field", data={**body_of(), "priority": "high"}, mentions=["priority"]),
    bad_request("unknown-input-field", data=body_of(fps=24), mentions=["fps"]),
]


@pytest.mark.parametrize("case", params(WRONG_TYPES))
async def test_wrong_type_is_refused_naming_the_field(s: Stack, case: Case) -> None:
    await check(s, case)


# -- a model that cannot serve the request ----------------------------------------------------------

UNSERVABLE = [
    bad_request(
        "mini-1080p",
        data=body_of(model="seedancee2/mini", resolution="1080p"),
        mentions=["input.resolution", "480p", "720p"],
    ),
    bad_request("resolution-4k", data=body_of(resolution="4k"), mentions=["input.resolution", "1080p"]),
    bad_request("duration-3", data=body_of(duration=3), mentions=["input.duration", "4", "15"]),
    bad_request(
        "aspect-ratio-9-21", data=body_of(aspect_ratio="9:21"), mentions=["input.aspect_ratio", "16:9", "adaptive"]
    ),
    bad_request("negative-prompt", data=body_of(negative_prompt="blur"), mentions=["input.negative_prompt", "prompt"]),
    bad_request("camera-fixed", data=body_of(camera_fixed=True), mentions=["input.camera_fixed"]),
    bad_request(
        "first-frame-without-last",
        data=body_of(first_frame="https://x/a.png"),
        mentions=["input.last_frame", "first_frame"],
    ),
    bad_request(
        "four-reference-videos",
        data=body_of(reference_videos=["https://x/v.mp4"] * 4),
        mentions=["input.reference_videos", "3"],
    ),
    bad_request("seed-out-of-range", data=body_of(seed=2**32), mentions=["input.seed", "4294967295"]),
]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("nope/x", id="unknown"),
        pytest.param("seedancee2", id="provider-only"),
        pytest.param("SEEDANCEE2/PRO", id="wrong-case"),
    ],
)
async def test_unknown_model_is_400_naming_the_field_and_listing_the_models(s: Stack, model: str) -> None:
    error = await check(s, bad_request("unknown-model", data=body_of(model=model), mentions=["model", repr(model)]))
    assert error["details"]["field"] == "model"
    assert {"seedancee2/pro", "seedancee2/fast", "seedancee2/mini"} <= set(error["details"]["allowed"])


@pytest.mark.parametrize("case", params(UNSERVABLE))
async def test_unservable_input_names_field_and_allowed_values(s: Stack, case: Case) -> None:
    error = await check(s, case)
    assert error["details"]["allowed"], error


# -- URL inputs -------------------------------------------------------------------------------------

PUBLIC_IMAGE = "https://cdn.example.com/a.png"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        pytest.param("file:///etc/passwd", "'file:'", id="file"),
        pytest.param("gopher://cdn.example.com/_x", "'gopher:'", id="gopher"),
        pytest.param("ftp://cdn.example.com/a.png", "'ftp:'", id="ftp"),
        pytest.param("javascript:alert(1)", "'javascript:'", id="javascript"),
        pytest.param("cdn.example.com/a.png", "absolute", id="relative"),
        pytest.param("https:///a.png", "no host", id="no-host"),
        pytest.param("http://[::1/a.png", "not a valid URL", id="broken-ipv6"),
        pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="cloud-metadata"),
        pytest.param("http://2852039166/latest/meta-data/", "link-local", id="metadata-as-one-number"),
        pytest.param("http://0xa9fea9fe/", "link-local", id="metadata-in-hex"),
        pytest.param("http://[::ffff:169.254.169.254]/", "link-local", id="metadata-ipv4-mapped"),
        pytest.param("http://[fe80::1]/a.png", "link-local", id="ipv6-link-local"),
        pytest.param("http://0.0.0.0/a.png", "unspecified", id="unspecified"),
        pytest.param("http://[::]/a.png", "unspecified", id="ipv6-unspecified"),
        pytest.param("http://224.0.0.1/a.png", "multicast", id="multicast"),
        pytest.param("http://[ff02::1]/a.png", "multicast", id="ipv6-multicast"),
        pytest.param("http://240.0.0.1/a.png", "reserved", id="reserved"),
        pytest.param("http://127.0.0.1:8000/a.png", "loopback", id="loopback"),
        pytest.param("http://localhost/a.png", "loopback", id="localhost"),
    ],
)
@pytest.mark.parametrize("field", ["first_frame", "last_frame", "reference_images", "reference_videos"])
async def test_a_url_input_other_than_a_public_http_url_or_data_uri_is_refused_saying_what_is_accepted(
    s: Stack, field: str, url: str, why: str
) -> None:
    given: dict[str, Any] = {"first_frame": PUBLIC_IMAGE, "last_frame": PUBLIC_IMAGE} if "frame" in field else {}
    given[field] = [url] if field.startswith("reference_") else url
    error = await check(s, bad_request("url", data=body_of(**given), mentions=[f"input.{field}", why]))
    assert "only https:// or http:// URLs and data: URIs" in error["message"], error
    assert error["details"] == {"field": f"input.{field}", "allowed": ["https://...", "http://...", "data:..."]}


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(PUBLIC_IMAGE, id="https"),
        pytest.param("http://cdn.example.com/a.png", id="http"),
        pytest.param("HTTPS://CDN.EXAMPLE.COM/A.PNG", id="upper-case-scheme"),
        pytest.param("https://93.184.215.14/a.png", id="public-ipv4"),
        pytest.param("data:image/png;base64,iVBORw0KGgo=", id="data-uri"),
    ],
)
async def test_a_public_http_url_or_a_data_uri_is_accepted(s: Stack, url: str) -> None:
    response = await s.client.post(s.url + JOBS, json=body_of(reference_images=[url]), headers=s.headers)
    assert response.status_code == 202, response.text


# -- invalid Unicode and hostile bytes in the body, headers, path and query ---------------------------

BAD_UNICODE = [
    bad_request("invalid-utf8-in-string", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\xff\xfe"}}'),
    bad_request("invalid-utf8-in-key", raw=b'{"model":"seedancee2/pro","input":{"pr\xffompt":"x"}}'),
    bad_request("overlong-slash", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\xc0\xaf"}}'),
    bad_request("overlong-nul", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\xc0\x80"}}'),
    bad_request("utf8-encoded-surrogate", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\xed\xa0\x80"}}'),
    bad_request("truncated-utf8", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\xe2\x82"}}'),
    bad_request(
        "latin1-charset-declared",
        raw=b'{"model":"seedancee2/pro","input":{"prompt":"caf\xe9"}}',
        content_type=b"application/json; charset=latin-1",
    ),
    bad_request("lone-high-surrogate-escape", raw=b'{"model":"seedancee2/pro","input":{"prompt":"\\ud800"}}'),
    bad_request("lone-low-surrogate-escape", raw=b'{"model":"seedancee2/pro","input":{"prompt":"a\\udfffb"}}'),
    bad_request("surrogate-escape-in-model", raw=b'{"model":"\\ud800","input":{"prompt":"x"}}'),
    bad_request(
        "surrogate-escape-in-metadata",
        raw=b'{"model":"seedancee2/pro","input":{"prompt":"x"},"metadata":{"k":"\\ud800x"}}',
    ),
    bad_request("raw-nul-byte-in-string", raw=b'{"model":"seedancee2/pro","input":{"prompt":"a\x00b"}}'),
    bad_request("raw-control-char-in-string", raw=b'{"model":"seedancee2/pro","input":{"prompt":"a\nb"}}'),
    bad_request("nul-in-metadata-key", data=with_meta({"a\x00": "b"}), mentions=["metadata"]),
    bad_request(
        "idempotency-key-non-ascii",
        data=body_of(),
        headers=[(b"idempotency-key", b"\xff\xfe")],
        mentions=["Idempotency-Key"],
    ),
    bad_request(
        "idempotency-key-300-chars",
        data=body_of(),
        headers=[(b"idempotency-key", b"k" * 300)],
        mentions=["Idempotency-Key"],
    ),
    bad_request(
        "idempotency-key-empty", data=body_of(), headers=[(b"idempotency-key", b"")], mentions=["Idempotency-Key"]
    ),
]


@pytest.mark.parametrize("case", params(BAD_UNICODE))
async def test_invalid_unicode_in_body_or_header_is_refused(s: Stack, case: Case) -> None:
    await check(s, case)


async def test_escaped_nul_in_prompt_is_kept_exactly_or_refused(s: Stack) -> None:
    # "\u0000" is valid JSON and valid Unicode: never a 5xx, and if accepted it must round-trip intact.
    response = await s.client.post(s.url + JOBS, json=body_of(prompt="a\x00b"), headers=s.headers)
    if response.status_code == 202:
        assert (await s.job(response.json()["id"]))["input"]["prompt"] == "a\x00b"
    else:
        assert_error(response, 400, "invalid_request")


async def test_control_character_in_a_header_is_refused_by_the_http_server(s: Stack) -> None:
    # Invalid HTTP (RFC 9110 forbids CTLs in field values): uvicorn answers 400 itself, before the app, so
    # this one answer is uvicorn's plain text rather than the error shape. Never a 5xx, and nothing created.
    before = await s.store.last_event_id()
    headers = [(b"authorization", f"Bearer {s.key}".encode()), (b"idempotency-key", b"a\x01b")]
    response = await s.client.post(s.url + JOBS, content=GOOD, headers=headers)
    assert response.status_code == 400
    assert await s.store.last_event_id() == before
    assert (await s.client.get(s.url + "/healthz")).status_code == 200


def get(id: str, path: str, status: int = 400, code: str = "invalid_request", **kwargs: Any) -> Case:
    return Case(id=id, status=status, code=code, method="GET", path=path, **kwargs)


CURSOR_NOT_ASCII = base64.urlsafe_b64encode(b"job_" + "é".encode() * 13).decode()

BAD_URLS = [
    get("job-id-invalid-utf8", "/v1/jobs/%FF%FE", 404, "not_found"),
    get("job-id-nul", "/v1/jobs/%00", 404, "not_found"),
    get("job-id-overlong-utf8", "/v1/jobs/job_%C0%AF", 404, "not_found"),
    get("job-id-20k", "/v1/jobs/" + "a" * 20_000, 404, "not_found"),
    get("job-id-wellformed-unknown", "/v1/jobs/job_01JZ0000000000000000000000", 404, "not_found"),
    get("job-events-invalid-utf8", "/v1/jobs/%FF%FE/events", 404, "not_found"),
    Case("cancel-invalid-utf8", 404, "not_found", path="/v1/jobs/%FF%FE/cancel"),
    get("status-invalid-utf8", "/v1/jobs?status=%FF", mentions=["status"]),
    get("status-unknown", "/v1/jobs?status=done", mentions=["status"]),
    get("status-empty", "/v1/jobs?status=", mentions=["status"]),
    get("cursor-garbage", "/v1/jobs?cursor=garbage", mentions=["cursor"]),
    get("cursor-invalid-utf8", "/v1/jobs?cursor=%FF", mentions=["cursor"]),
    get("cursor-not-ascii-inside", "/v1/jobs?cursor=" + CURSOR_NOT_ASCII, mentions=["cursor"]),
    get("cursor-30k", "/v1/jobs?cursor=" + "A" * 30_000, mentions=["cursor"]),
    get("limit-abc", "/v1/jobs?limit=abc", mentions=["limit"]),
    get("limit-0", "/v1/jobs?limit=0", mentions=["limit"]),
    get("limit-1000", "/v1/jobs?limit=1000", mentions=["limit"]),
    get("limit-negative", "/v1/jobs?limit=-1", mentions=["limit"]),
    get("limit-float", "/v1/jobs?limit=1.5", mentions=["limit"]),
    get("limit-empty", "/v1/jobs?limit=", mentions=["limit"]),
    get("limit-10e23", "/v1/jobs?limit=" + "9" * 24, mentions=["limit"]),
    get("metadata-key-space", "/v1/jobs?metadata.a%20b=x", mentions=["metadata"]),
    get("metadata-key-invalid-utf8", "/v1/jobs?metadata.%FF=x", mentions=["metadata"]),
    get("metadata-key-empty", "/v1/jobs?metadata.=x", mentions=["metadata"]),
    get("metadata-key-41-chars", "/v1/jobs?metadata." + "k" * 41 + "=x", mentions=["metadata"]),
    get("last-event-id-query-abc", "/v1/events?last_event_id=abc", mentions=["Last-Event-ID"]),
    get("last-event-id-query-negative", "/v1/events?last_event_id=-1", mentions=["Last-Event-ID"]),
    get("last-event-id-query-invalid-utf8", "/v1/events?last_event_id=%FF", mentions=["Last-Event-ID"]),
    get("last-event-id-query-superscript", "/v1/events?last_event_id=%C2%B2", mentions=["Last-Event-ID"]),
    get("last-event-id-query-arabic-digits", "/v1/events?last_event_id=%D9%A1", mentions=["Last-Event-ID"]),
    get("last-event-id-header-latin1", "/v1/events", headers=[(b"last-event-id", b"\xb2")], mentions=["Last-Event-ID"]),
    get(
        "last-event-id-header-non-ascii",
        "/v1/events",
        headers=[(b"last-event-id", b"\xff\xfe")],
        mentions=["Last-Event-ID"],
    ),
    get(
        "last-event-id-header-5000-digits",
        "/v1/events",
        headers=[(b"last-event-id", b"9" * 5000)],
        mentions=["Last-Event-ID"],
    ),
    get("usage-start-garbage", "/v1/usage?start=yesterday", mentions=["start"]),
    get("usage-start-invalid-utf8", "/v1/usage?start=%FF", mentions=["start"]),
    get("usage-start-offset-99h", "/v1/usage?start=2020-01-01T00:00:00%2B99:00", mentions=["start"]),
    get("usage-start-overflows-year-9999", "/v1/usage?start=9999-12-31T23:59:59-23:59", mentions=["start"]),
    get("usage-start-underflows-year-1", "/v1/usage?start=0001-01-01T00:00:00%2B01:00", mentions=["start"]),
    get("usage-end-garbage", "/v1/usage?end=%00", mentions=["end"]),
]


@pytest.mark.parametrize("case", params(BAD_URLS))
async def test_bad_path_query_or_header_is_refused(s: Stack, case: Case) -> None:
    await check(s, case)


# -- query strings ---------------------------------------------------------------------------------

UNKNOWN_JOB = "/v1/jobs/job_01JZ0000000000000000000000"
# Each /v1 endpoint and the query parameters it accepts (a typo in any of them must not be ignored).
V1_QUERIES = [
    ("GET", JOBS, ["cursor", "limit", "model", "provider", "status", "metadata.<key>"]),
    ("POST", JOBS, []),
    ("GET", UNKNOWN_JOB, []),
    ("POST", UNKNOWN_JOB + "/cancel", []),
    ("GET", UNKNOWN_JOB + "/events", ["last_event_id", "token"]),
    ("GET", "/v1/events", ["last_event_id", "token"]),
    ("POST", "/v1/stream-tokens", []),
    ("GET", "/v1/models", []),
    ("GET", "/v1/usage", ["end", "start"]),
]


async def answer(s: Stack, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The response, its body read unless it is a 2xx (an event stream that was not refused never ends)."""
    async with s.client.stream(method, url, **kwargs) as response:
        if response.status_code >= 300:
            await response.aread()
    return response


@pytest.mark.parametrize(("method", "path", "accepted"), V1_QUERIES, ids=[f"{m} {p}" for m, p, _ in V1_QUERIES])
async def test_an_unknown_query_parameter_is_400_naming_it_and_the_accepted_ones(
    s: Stack, method: str, path: str, accepted: list[str]
) -> None:
    content = GOOD if method == "POST" else None
    headers = {**s.headers, "content-type": "application/json"}
    response = await answer(s, method, f"{s.url}{path}?stauts=failed", content=content, headers=headers)
    error = assert_error(response, 400, "invalid_request")
    assert error["details"] == {"parameter": "stauts", "allowed": accepted}, error
    assert "stauts" in error["message"], error
    for name in accepted:
        assert name in error["message"], error


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("/v1/jobs?status=queued&model=seedancee2/pro&provider=seedancee2&limit=5", id="jobs-columns"),
        pytest.param("/v1/jobs?metadata.team=video&metadata.env=prod", id="jobs-metadata-family"),
        pytest.param("/v1/usage?start=2020-01-01&end=2030-01-01", id="usage-range"),
        pytest.param("/v1/events?last_event_id=0", id="events-cursor"),
    ],
)
async def test_the_declared_query_parameters_are_accepted(s: Stack, query: str) -> None:
    response = await answer(s, "GET", s.url + query, headers=s.headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("/v1/jobs?limit=5&limit=6", id="limit"),
        pytest.param("/v1/jobs?metadata.team=a&metadata.team=b", id="metadata-key"),
        pytest.param("/v1/usage?start=2020-01-01&start=2021-01-01", id="usage-start"),
        pytest.param("/v1/events?last_event_id=1&last_event_id=2", id="events-cursor"),
    ],
)
async def test_a_query_parameter_given_twice_is_400_naming_it(s: Stack, query: str) -> None:
    error = assert_error(await answer(s, "GET", s.url + query, headers=s.headers), 400, "invalid_request")
    name = query.split("?")[1].split("=")[0]
    assert error["details"] == {"parameter": name}, error
    assert "more than once" in error["message"], error


def metadata_filters(count: int) -> str:
    return "&".join(f"metadata.k{i}=v" for i in range(count))


async def test_more_metadata_filters_than_a_job_can_hold_is_400_naming_the_limit_not_an_outage(s: Stack) -> None:
    # 994 of them once overflowed SQLite's expression depth, which the API reported as a 503 outage.
    for count in (51, 1000):
        response = await s.client.get(f"{s.url}{JOBS}?{metadata_filters(count)}", headers=s.headers)
        error = assert_error(response, 400, "invalid_request")
        assert "at most 50" in error["message"], error
        assert error["details"] == {"field": "metadata", "max_filters": 50}, error
    assert (await s.client.get(f"{s.url}{JOBS}?{metadata_filters(50)}", headers=s.headers)).status_code == 200
    assert (await s.client.get(s.url + "/readyz")).status_code == 200


async def test_very_long_filter_values_find_nothing_and_the_service_stays_ready(s: Stack) -> None:
    long = "x" * 20_000
    for query in (
        f"model={long}",
        f"provider={long}",
        f"metadata.k={long}",
        f"{metadata_filters(49)}&metadata.z={long}",
    ):
        response = await s.client.get(f"{s.url}{JOBS}?{query}", headers=s.headers)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["data"] == []
    assert (await s.client.get(s.url + "/readyz")).status_code == 200


# -- bodies over the cap --------------------------------------------------------------------------


async def five_mib_in_chunks() -> AsyncIterator[bytes]:
    chunk = b" " * 65536
    for _ in range(5 * MiB // len(chunk)):
        yield chunk


@pytest.mark.parametrize(
    ("path", "chunked"),
    [
        pytest.param(JOBS, False, id="jobs-content-length"),
        pytest.param(JOBS, True, id="jobs-chunked"),
        pytest.param(WEBHOOK, False, id="webhook-content-length"),
        pytest.param(WEBHOOK, True, id="webhook-chunked"),
    ],
)
async def test_five_mib_body_is_413(s: Stack, path: str, chunked: bool) -> None:
    assert s.settings.max_body_bytes < 5 * MiB
    content: bytes | AsyncIterator[bytes] = five_mib_in_chunks() if chunked else b'{"a":"' + b"x" * (5 * MiB) + b'"}'
    headers = {**s.headers, "content-type": "application/json"}
    response = await s.client.post(s.url + path, content=content, headers=headers)
    if chunked:
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "payload_too_large")


# -- authentication -------------------------------------------------------------------------------

AuthVariant = Callable[[str], Headers]

AUTH_VARIANTS: dict[str, AuthVariant] = {
    "missing": lambda key: [],
    "bearer-empty": lambda key: [(b"authorization", b"Bearer")],
    "bearer-malformed": lambda key: [(b"authorization", b"Bearer not-a-key")],
    "bearer-unknown-wellformed": lambda key: [(b"authorization", f"Bearer {UNKNOWN_KEY}".encode())],
    "bearer-known-id-wrong-secret": lambda key: [(b"authorization", f"Bearer {key[:21]}wrong".encode())],
    "basic": lambda key: [(b"authorization", b"Basic " + base64.b64encode(key.encode()))],
    "token-scheme-valid-key": lambda key: [(b"authorization", f"Token {key}".encode())],
    "bearer-non-ascii": lambda key: [(b"authorization", b"Bearer rlk_\xff\xfe" + b"\xff" * 14 + b"_abc")],
    "x-api-key-malformed": lambda key: [(b"x-api-key", b"nope")],
    "x-api-key-non-ascii": lambda key: [(b"x-api-key", b"rlk_\xff\xfe")],
    "x-api-key-with-bearer-prefix": lambda key: [(b"x-api-key", f"Bearer {key}".encode())],
}

AUTHED_ENDPOINTS = [
    ("POST", JOBS),
    ("GET", JOBS),
    ("GET", "/v1/jobs/job_01JZ0000000000000000000000"),
    ("POST", "/v1/jobs/job_01JZ0000000000000000000000/cancel"),
    ("GET", "/v1/jobs/job_01JZ0000000000000000000000/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/models"),
    ("GET", "/v1/usage"),
]


@pytest.mark.parametrize("variant", list(AUTH_VARIANTS))
@pytest.mark.parametrize(("method", "path"), AUTHED_ENDPOINTS, ids=[f"{m} {p}" for m, p in AUTHED_ENDPOINTS])
async def test_bad_credentials_are_401(s: Stack, variant: str, method: str, path: str) -> None:
    content = GOOD if method == "POST" else None
    headers = [*AUTH_VARIANTS[variant](s.key), (b"content-type", b"application/json")]
    response = await s.client.request(method, s.url + path, content=content, headers=headers)
    assert_error(response, 401, "unauthorized")


async def test_an_empty_x_api_key_header_leaves_the_bearer_token_to_decide(s: Stack) -> None:
    headers = [(b"x-api-key", b""), (b"authorization", f"Bearer {s.key}".encode())]
    assert (await s.client.get(s.url + JOBS, headers=headers)).status_code == 200
    assert_error(await s.client.get(s.url + JOBS, headers=[(b"x-api-key", b"")]), 401, "unauthorized")


async def test_revoked_key_is_401(s: Stack) -> None:
    record, key = await create_key(s.store, "soon-revoked", now=time.time())
    headers = {"Authorization": f"Bearer {key}"}
    assert (await s.client.get(s.url + JOBS, headers=headers)).status_code == 200
    assert await revoke_key(s.store, record.id, now=time.time())
    s.app.state.ctx.key_cache.clear()  # the API caches keys for up to 5 s
    assert_error(await s.client.get(s.url + JOBS, headers=headers), 401, "unauthorized")
    assert_error(await s.client.post(s.url + JOBS, json=body_of(), headers=headers), 401, "unauthorized")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        pytest.param("GET", "", id="get"),
        pytest.param("POST", "/cancel", id="cancel"),
        pytest.param("GET", "/events", id="events"),
    ],
)
async def test_another_keys_job_is_404_and_untouched(
    s: Stack, pending: dict[str, Any], method: str, suffix: str
) -> None:
    _, other = await create_key(s.store, "other", now=time.time())
    before = await snapshot(s, pending["id"])
    response = await s.client.request(
        method, f"{s.url}{JOBS}/{pending['id']}{suffix}", headers={"Authorization": f"Bearer {other}"}
    )
    assert_error(response, 404, "not_found")
    assert await snapshot(s, pending["id"]) == before


async def test_another_keys_job_is_not_listed(s: Stack, pending: dict[str, Any]) -> None:
    _, other = await create_key(s.store, "other-lister", now=time.time())
    response = await s.client.get(s.url + JOBS, headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 200
    assert pending["id"] not in {job["id"] for job in response.json()["data"]}


# -- hostile webhook signatures --------------------------------------------------------------------


def completed_body(job: dict[str, Any]) -> bytes:
    """What the emulator would send when the job's task completes."""
    data = {
        "id": job["provider_task_id"],
        "status": "completed",
        "model": "pro",
        "created_at": job["created_at"],
        "completed_at": job["created_at"],
        "credits_charged": 100,
        "output": {"video_url": "https://cdn.example/forged.mp4", "thumbnail_url": "https://cdn.example/forged.jpg"},
        "metadata": {"reelay_job_id": job["id"]},
    }
    return json.dumps({"data": data}).encode()


def signature(s: Stack, body: bytes, *, at: int | None = None, secret: str | None = None) -> str:
    key = secret if secret is not None else s.settings.providers["seedancee2"].webhook_secrets[0]
    return sign_header(body, key, timestamp=int(time.time()) if at is None else at)


SignatureVariant = Callable[[Stack, bytes], Headers]


def header(value: str | bytes) -> Headers:
    return [(SIGNATURE.encode(), value if isinstance(value, bytes) else value.encode())]


def valid_v1(s: Stack, body: bytes) -> str:
    return signature(s, body).split(",", 1)[1]


HOSTILE_SIGNATURES: dict[str, SignatureVariant] = {
    "missing": lambda s, body: [],
    "empty": lambda s, body: header(""),
    "t-abc": lambda s, body: header(f"t=abc,{valid_v1(s, body)}"),
    "t-missing": lambda s, body: header(valid_v1(s, body)),
    "v1-missing": lambda s, body: header(f"t={int(time.time())}"),
    "duplicate-t": lambda s, body: header(f"t={int(time.time())},t={int(time.time())},{valid_v1(s, body)}"),
    "huge-t": lambda s, body: header("t=" + "9" * 40 + ",v1=" + "0" * 64),
    "negative-t": lambda s, body: header(f"t=-{int(time.time())},{valid_v1(s, body)}"),
    "non-ascii-bytes": lambda s, body: header(b"\xff\xfe"),
    "non-ascii-around-valid": lambda s, body: header(signature(s, body).encode() + b",\xe9"),
    "50kb": lambda s, body: header(f"t={int(time.time())},v1=" + "a" * 50_000),  # more is 431 (REELAY_MAX_HEADER_BYTES)
    "v1-not-hex": lambda s, body: header(f"t={int(time.time())},v1=zzzz"),
    "v1-wrong-secret": lambda s, body: header(signature(s, body, secret="whsec_not_the_secret")),
    "v1-of-other-body": lambda s, body: header(signature(s, body + b" ")),
    "stale-timestamp": lambda s, body: header(signature(s, body, at=int(time.time()) - 3600)),
    "future-timestamp": lambda s, body: header(signature(s, body, at=int(time.time()) + 3600)),
    "signature-in-wrong-header": lambda s, body: [(b"x-signature", signature(s, body).encode())],
}


@pytest.mark.parametrize("variant", list(HOSTILE_SIGNATURES))
async def test_hostile_signature_is_401_and_changes_nothing(s: Stack, pending: dict[str, Any], variant: str) -> None:
    body = completed_body(pending)
    before = await snapshot(s, pending["id"])
    headers = [*HOSTILE_SIGNATURES[variant](s, body), (b"content-type", b"application/json")]
    response = await s.client.post(s.url + WEBHOOK, content=body, headers=headers)
    error = assert_error(response, 401, "invalid_signature")
    assert isinstance(error["details"]["reason"], str), error
    assert error["details"]["reason"], error
    assert await snapshot(s, pending["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"data":[]}', id="data-array"),
        pytest.param(b'{"data":{"id":"vid_x","status":"\xff"}}', id="invalid-utf8"),
        pytest.param(b'{"data":{"id":"\\ud800"}}', id="lone-surrogate"),
        pytest.param(b'{"data":' * 100_000 + b"1" + b"}" * 100_000, id="deep-nesting"),
    ],
)
async def test_signed_but_unreadable_webhook_is_400(s: Stack, body: bytes) -> None:
    response = await s.client.post(s.url + WEBHOOK, content=body, headers={SIGNATURE: signature(s, body)})
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/webhooks/nosuch", id="unknown-provider"),
        pytest.param("/webhooks/%FF%FE", id="invalid-utf8-provider"),
        pytest.param("/webhooks/nosuch/job_x/token", id="unknown-provider-per-job"),
        pytest.param("/webhooks/minuit", id="known-but-unconfigured-provider"),
    ],
)
async def test_a_webhook_for_a_provider_not_served_here_is_404(s: Stack, path: str) -> None:
    response = await s.client.post(s.url + path, content=b'{"data":{"id":"x"}}')
    assert_error(response, 404, "not_found")


async def test_per_job_webhook_with_wrong_token_is_401_and_changes_nothing(s: Stack, pending: dict[str, Any]) -> None:
    before = await snapshot(s, pending["id"])
    response = await s.client.post(f"{s.url}{WEBHOOK}/{pending['id']}/not-the-token", content=completed_body(pending))
    error = assert_error(response, 401, "invalid_signature")
    assert error["details"]["reason"] == "invalid_token"
    assert await snapshot(s, pending["id"]) == before


async def test_the_forged_body_is_applied_when_signed_properly(s: Stack) -> None:
    # The control for the hostile-signature tests: the same body, correctly signed, does complete a job.
    job = await pending_job(s)
    body = completed_body(job)
    response = await s.client.post(s.url + WEBHOOK, content=body, headers={SIGNATURE: signature(s, body)})
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "result": "applied"}
    assert (await s.job(job["id"]))["status"] == "succeeded"


# -- Idempotency-Key --------------------------------------------------------------------------------


async def test_idempotency_same_key_same_body_returns_the_same_job(s: Stack) -> None:
    headers = {**s.headers, "Idempotency-Key": "bad-input-same"}
    first = await s.client.post(s.url + JOBS, json=body_of(), headers=headers)
    again = await s.client.post(s.url + JOBS, json=body_of(), headers=headers)
    assert first.status_code == 202, first.text
    assert again.status_code in (200, 202), again.text
    assert again.json()["id"] == first.json()["id"]


async def test_idempotency_same_key_other_body_is_409(s: Stack) -> None:
    headers = {**s.headers, "Idempotency-Key": "bad-input-conflict"}
    first = await s.client.post(s.url + JOBS, json=body_of(), headers=headers)
    assert first.status_code == 202, first.text
    other = await s.client.post(s.url + JOBS, json=body_of(duration=6), headers=headers)
    error = assert_error(other, 409, "idempotency_conflict")
    assert error["details"]["job_id"] == first.json()["id"]


# -- routing --------------------------------------------------------------------------------------

ROUTING = [
    get("unknown-root", "/nope", 404, "not_found", auth=False),
    get("unknown-v1", "/v1/nope", 404, "not_found"),
    get("unknown-under-job", "/v1/jobs/job_x/nope", 404, "not_found"),
    get("unknown-v2", "/v2/jobs", 404, "not_found"),
    get("webhooks-root", "/webhooks", 404, "not_found", auth=False),
    Case("webhook-too-deep", 404, "not_found", path="/webhooks/seedancee2/a/b/c/d", auth=False),
    Case("delete-jobs", 405, "method_not_allowed", method="DELETE", path=JOBS),
    Case("put-job", 405, "method_not_allowed", method="PUT", path="/v1/jobs/job_x"),
    Case("patch-job", 405, "method_not_allowed", method="PATCH", path="/v1/jobs/job_x"),
    Case("get-cancel", 405, "method_not_allowed", method="GET", path="/v1/jobs/job_x/cancel"),
    Case("post-events", 405, "method_not_allowed", method="POST", path="/v1/events"),
    Case("post-models", 405, "method_not_allowed", method="POST", path="/v1/models"),
    Case("post-healthz", 405, "method_not_allowed", method="POST", path="/healthz", auth=False),
    Case("delete-readyz", 405, "method_not_allowed", method="DELETE", path="/readyz", auth=False),
    Case("get-webhook", 405, "method_not_allowed", method="GET", path=WEBHOOK, auth=False),
]


@pytest.mark.parametrize("case", params(ROUTING))
async def test_unknown_route_or_wrong_method_is_error_shape(s: Stack, case: Case) -> None:
    await check(s, case)


# -- one error shape on every status ----------------------------------------------------------------

EVERY_STATUS = [
    bad_request("400-malformed-json", raw=b'{"model": "seedancee2/pro", "input": {'),
    bad_request("400-schema", data={"model": 1, "input": {"prompt": "x"}}),
    bad_request("400-capability", data=body_of(model="seedancee2/mini", resolution="1080p")),
    Case("401", 401, "unauthorized", method="GET", auth=False),
    get("404-unknown-job", UNKNOWN_JOB, 404, "not_found"),
    get("404-unknown-route", "/v1/nope", 404, "not_found"),
    Case("405", 405, "method_not_allowed", method="DELETE"),
    Case("409", 409, "idempotency_conflict", data=body_of(duration=6), headers=[(b"idempotency-key", b"every-409")]),
    Case("413", 413, "payload_too_large", raw=b'{"a":"' + b"x" * (2 * MiB) + b'"}'),
    Case("415", 415, "unsupported_media_type", raw=GOOD, content_type=b"text/plain"),
]


@pytest.mark.parametrize("case", params(EVERY_STATUS))
async def test_every_error_status_carries_details_as_an_object(s: Stack, case: Case) -> None:
    if case.status == 409:  # the key's first use, with another body
        first = await s.client.post(s.url + JOBS, json=body_of(), headers={**s.headers, "Idempotency-Key": "every-409"})
        assert first.status_code == 202, first.text
    response = await send(s, case)
    assert response.status_code == case.status, response.text[:300]
    details = response.json()["error"]["details"]
    assert isinstance(details, dict), response.text[:300]
    assert_error(response, case.status, case.code)
    if case.status == 405:  # the framework's own header survives the reshaping
        assert set(details["allowed"]) == set(response.headers["allow"].split(", ")), response.headers


async def test_a_schema_error_lists_its_errors_under_a_key(s: Stack) -> None:
    error = await check(s, bad_request("schema", data={"model": 1, "input": {"prompt": "x"}}))
    assert error["details"]["field"] == "model", error
    assert error["details"]["errors"] == [{"key": "model", "message": "Expected `str`, got `int`", "source": "body"}]


# -- afterwards ------------------------------------------------------------------------------------

TABLES = [
    [bad_request("unknown-model", data=body_of(model="nope/x"))],
    MALFORMED,
    WRONG_TYPES,
    UNSERVABLE,
    BAD_UNICODE,
    BAD_URLS,
    ROUTING,
]


async def test_after_a_barrage_the_service_is_healthy_and_completes_a_job(s: Stack, pending: dict[str, Any]) -> None:
    requests = [send(s, case) for table in TABLES for case in table]
    body = completed_body(pending)
    for variant in HOSTILE_SIGNATURES.values():
        requests.append(s.client.post(s.url + WEBHOOK, content=body, headers=variant(s, body)))
    for variant in AUTH_VARIANTS.values():
        requests.append(s.client.post(s.url + JOBS, content=GOOD, headers=variant(s.key)))
    requests.append(s.client.post(s.url + JOBS, content=b"x" * (5 * MiB), headers=s.headers))
    responses = await asyncio.gather(*requests)  # all at once, on many connections
    assert len(responses) > 150
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text[:300])
        assert_error(response, response.status_code)
    assert (await s.client.get(s.url + "/healthz")).status_code == 200
    assert (await s.client.get(s.url + "/readyz")).status_code == 200
    job = await s.submit(resolution="720p")
    done = await s.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done
    assert (await s.job(pending["id"]))["status"] == "queued"  # no forged webhook got through
