"""Tests for the plain ASGI and the Litestar signature middlewares: one contract, run against both."""

from __future__ import annotations

import asyncio
import base64
import datetime
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import standardwebhooks
import uvicorn
from litestar import Litestar, Request, Response, post

from reelay_signing import SignatureError, SignatureVerificationMiddleware, TimestampedScheme
from reelay_signing.asgi import ASGIApp, Message, Receive, Scope, Send, Verifier
from reelay_signing.litestar import LitestarSignatureVerificationMiddleware

NOW = 1_700_000_000
HEADER = "X-Seedancee2-Signature"
SECRET = "whsec_test_secret"
CAP = 1024
BODY = b'{"id": "vid_01", "status": "succeeded",\n "note": "caf\xc3\xa9"}'

SCHEME = TimestampedScheme(SECRET, header_name=HEADER, clock=lambda: NOW)


@dataclass
class Target:
    """An app behind the middleware, and what its handler saw."""

    app: ASGIApp
    seen: list[tuple[bytes, object]] = field(default_factory=list)


def plain_asgi_target(verify: Verifier = SCHEME.verify, cap: int = CAP) -> Target:
    seen: list[tuple[bytes, object]] = []

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        signature = scope.get("state", {}).get("signature")
        seen.append((body, signature))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-signature", repr(signature).encode())]}
        )
        await send({"type": "http.response.body", "body": body})

    app = SignatureVerificationMiddleware(echo, verify=verify, max_body_bytes=cap, paths=["/webhooks/"])
    return Target(app=app, seen=seen)


def litestar_target(verify: Verifier = SCHEME.verify, cap: int = CAP) -> Target:
    seen: list[tuple[bytes, object]] = []

    async def echo(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        signature = request.state.get("signature")
        seen.append((body, signature))
        return Response(
            body, status_code=200, media_type="application/octet-stream", headers={"x-signature": repr(signature)}
        )

    app = Litestar(
        route_handlers=[post("/webhooks/test")(echo), post("/other")(echo)],
        middleware=[LitestarSignatureVerificationMiddleware(verify=verify, max_body_bytes=cap, paths=["/webhooks/"])],
    )
    return Target(app=cast("ASGIApp", app), seen=seen)  # Litestar types its ASGI messages as TypedDicts


TARGETS = {"plain-asgi": plain_asgi_target, "litestar": litestar_target}


@pytest.fixture(params=list(TARGETS))
def make_target(request: pytest.FixtureRequest) -> Callable[..., Target]:
    return TARGETS[request.param]


@pytest.fixture
def target(make_target: Callable[..., Target]) -> Target:
    return make_target()


def client_for(target: Target) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=target.app), base_url="http://test")


def signed(body: bytes, timestamp: int = NOW) -> dict[str, str]:
    return SCHEME.sign(body, timestamp=timestamp)


async def test_valid_signature_reaches_handler_with_exact_bytes(target: Target) -> None:
    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=BODY, headers=signed(BODY))
    assert response.status_code == 200
    assert response.content == BODY
    assert target.seen == [(BODY, NOW)]
    assert response.headers["x-signature"] == repr(NOW)


async def test_chunked_body_is_reassembled_and_verified(target: Target) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(BODY), 7):
            yield BODY[start : start + 7]

    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=chunks(), headers=signed(BODY))
    assert response.status_code == 200
    assert target.seen == [(BODY, NOW)]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_header"),
        ({HEADER: "bad_header"}, "malformed_header"),
        ({HEADER: f"t={NOW},v0=00"}, "no_signature"),
        ({HEADER: f"t={NOW},v1={'0' * 64}"}, "signature_mismatch"),
        (signed(BODY, timestamp=NOW - 301), "timestamp_too_old"),
        (signed(BODY, timestamp=NOW + 301), "timestamp_in_future"),
        (signed(BODY + b" "), "signature_mismatch"),
    ],
)
async def test_bad_signature_is_refused_before_the_handler(
    target: Target, headers: dict[str, str], reason: str
) -> None:
    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid_signature"
    assert error["details"] == {"reason": reason}
    assert error["message"]
    assert target.seen == []


async def test_repeated_signature_header_is_refused(target: Target) -> None:
    value = signed(BODY)[HEADER]
    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=BODY, headers=[(HEADER, value), (HEADER, value)])
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "malformed_header"
    assert target.seen == []


async def test_body_over_cap_with_content_length_is_413(target: Target) -> None:
    body = b"x" * (CAP + 1)
    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=body, headers=signed(body))
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"] == {"reason": "body_too_large", "max_bytes": CAP}
    assert target.seen == []


async def test_body_at_cap_passes(target: Target) -> None:
    body = b"x" * CAP
    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=body, headers=signed(body))
    assert response.status_code == 200
    assert target.seen == [(body, NOW)]


async def test_chunked_body_over_cap_is_413_without_reading_the_rest(target: Target) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"y" * 300

    async with client_for(target) as client:
        response = await client.post("/webhooks/test", content=endless(), headers=signed(b""))
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert pulled == 4  # 4 x 300 bytes is the first read past the 1024-byte cap
    assert target.seen == []


async def test_other_paths_pass_unverified(target: Target) -> None:
    async with client_for(target) as client:
        response = await client.post("/other", content=BODY)
    assert response.status_code == 200
    assert target.seen == [(BODY, None)]


async def test_another_scheme_plugs_into_the_same_middleware(make_target: Callable[..., Target]) -> None:
    secret = base64.b64encode(b"standard-webhooks-key").decode()
    webhook = standardwebhooks.Webhook(secret)

    def verify_standard(headers: Mapping[str, str], body: bytes) -> object:
        try:
            webhook.verify(body, dict(headers), json_parse=False)
        except standardwebhooks.webhooks.WebhookVerificationError as error:
            raise SignatureError("signature_mismatch", str(error)) from None
        return headers["webhook-id"]

    target = make_target(verify=verify_standard)
    now = datetime.datetime.now(datetime.UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": webhook.sign("msg_1", now, BODY.decode()),
    }
    async with client_for(target) as client:
        good = await client.post("/webhooks/test", content=BODY, headers=headers)
        bad = await client.post("/webhooks/test", content=BODY + b" ", headers=headers)
    assert good.status_code == 200
    assert bad.status_code == 401
    assert bad.json()["error"]["details"] == {"reason": "signature_mismatch"}
    assert target.seen == [(BODY, "msg_1")]


# --- Raw ASGI calls: exact control of what the server sends and how often the body is read -------------


@dataclass
class Exchange:
    status: int | None = None
    body: bytes = b""
    receive_calls: int = 0


async def call(
    app: ASGIApp, headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/webhooks/test"
) -> Exchange:
    exchange = Exchange()
    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]
    )

    async def receive() -> Message:
        exchange.receive_calls += 1
        message = next(messages, None)
        if message is None:
            await asyncio.sleep(3600)  # a real server blocks until the client leaves
        assert message is not None
        return message

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        else:
            exchange.body += message.get("body", b"")

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return exchange


def raw_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in signed(body).items()]


async def test_body_is_read_from_the_client_once(target: Target) -> None:
    chunks = [BODY[:10], BODY[10:20], BODY[20:]]
    exchange = await call(target.app, raw_headers(BODY), chunks)
    assert exchange.status == 200
    assert exchange.body == BODY
    assert exchange.receive_calls == len(chunks)
    assert target.seen == [(BODY, NOW)]


async def test_announced_content_length_over_cap_is_413_before_reading(target: Target) -> None:
    headers = [*raw_headers(b"tiny"), (b"content-length", str(CAP + 1).encode())]
    exchange = await call(target.app, headers, [b"tiny"])
    assert exchange.status == 413
    assert exchange.receive_calls == 0
    assert target.seen == []


async def test_absurd_content_length_is_413(target: Target) -> None:
    headers = [*raw_headers(b"tiny"), (b"content-length", b"9" * 5000)]
    exchange = await call(target.app, headers, [b"tiny"])
    assert exchange.status == 413


async def test_disconnect_while_reading_calls_nothing() -> None:
    target = plain_asgi_target()
    sent: list[Message] = []
    incoming: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"part", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "path": "/webhooks/test", "headers": raw_headers(b"partial body")}
    await target.app(scope, receive, send)
    assert sent == []
    assert target.seen == []


async def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def never() -> Message:
        raise AssertionError("the middleware must not read a non-HTTP connection")

    async def discard(message: Message) -> None:
        raise AssertionError("the middleware must not answer a non-HTTP connection")

    app = SignatureVerificationMiddleware(inner, verify=SCHEME.verify)
    await app({"type": "lifespan"}, never, discard)
    await app({"type": "websocket", "path": "/webhooks/test", "headers": []}, never, discard)
    assert seen == ["lifespan", "websocket"]


async def test_paths_accepts_a_predicate() -> None:
    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = SignatureVerificationMiddleware(inner, verify=SCHEME.verify, paths=lambda path: path.endswith("/hook"))

    guarded = await call(app, [], [b""], path="/a/hook")
    unguarded = await call(app, [], [b""], path="/a/other")
    assert (guarded.status, unguarded.status) == (401, 204)


@pytest.mark.parametrize("cap", [0, -1, True])
def test_unusable_cap_is_refused_at_construction(cap: int) -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        SignatureVerificationMiddleware(lambda *_: asyncio.sleep(0), verify=SCHEME.verify, max_body_bytes=cap)
    with pytest.raises(ValueError, match="max_body_bytes"):
        LitestarSignatureVerificationMiddleware(verify=SCHEME.verify, max_body_bytes=cap)


# --- Over real HTTP (uvicorn) ------------------------------------------------------------------------


@pytest.fixture
async def served(target: Target) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(target.app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_over_http_valid_bad_and_oversized(served: str, target: Target) -> None:
    async def oversized() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"z" * 4096

    async with httpx.AsyncClient(base_url=served) as client:
        good = await client.post("/webhooks/test", content=BODY, headers=signed(BODY))
        bad = await client.post("/webhooks/test", content=BODY, headers=signed(b"other"))
        too_big = await client.post("/webhooks/test", content=oversized(), headers=signed(b""))
        too_big_declared = await client.post("/webhooks/test", content=b"z" * 65536, headers=signed(b""))
    assert (good.status_code, good.content) == (200, BODY)
    assert (bad.status_code, bad.json()["error"]["details"]["reason"]) == (401, "signature_mismatch")
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "payload_too_large")
    assert (too_big_declared.status_code, too_big_declared.json()["error"]["code"]) == (413, "payload_too_large")
    assert target.seen == [(BODY, NOW)]
