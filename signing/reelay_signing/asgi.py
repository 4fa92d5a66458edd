"""Plain ASGI middleware that reads a request body once, under a size cap, verifies its signature and replays it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any, Final, Protocol, TypeAlias

from reelay_signing.errors import SignatureError

__all__ = (
    "DEFAULT_MAX_BODY_BYTES",
    "PathFilter",
    "SignatureVerificationMiddleware",
    "Verifier",
    "guard_request",
    "read_body",
    "request_headers",
)

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
# A predicate on the request path, or path prefixes; None means every HTTP request.
PathFilter: TypeAlias = Callable[[str], bool] | Collection[str] | None

DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024


class Verifier(Protocol):
    """Checks a request's signature from its headers and raw body; raises SignatureError when it is bad.

    Header names arrive lower-cased. Whatever it returns is stored in ``scope["state"]["signature"]``.
    """

    def __call__(self, headers: Mapping[str, str], body: bytes, /) -> object: ...


class SignatureVerificationMiddleware:
    """Refuse HTTP requests whose body is too large (413) or badly signed (401); pass the rest on intact."""

    __slots__ = ("_app", "_matches", "_max_body_bytes", "_verify")

    def __init__(
        self,
        app: ASGIApp,
        *,
        verify: Verifier,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        paths: PathFilter = None,
    ) -> None:
        """Wrap ``app``; ``paths`` limits verification to matching request paths (predicate or prefixes)."""
        self._app = app
        self._verify = verify
        self._max_body_bytes = check_max_body_bytes(max_body_bytes)
        self._matches = path_matcher(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._matches(scope["path"]):
            await self._app(scope, receive, send)
            return
        await guard_request(scope, receive, send, self._app, verify=self._verify, max_body_bytes=self._max_body_bytes)


async def guard_request(
    scope: Scope,
    receive: Receive,
    send: Send,
    app: ASGIApp,
    *,
    verify: Verifier,
    max_body_bytes: int,
) -> None:
    """Read and verify one HTTP request, then answer it with an error or hand it to ``app`` with its body."""
    headers = request_headers(scope["headers"])
    try:
        body = await read_body(receive, max_bytes=max_body_bytes, content_length=headers.get("content-length"))
        if body is None:
            return  # the client left; there is nobody to answer
        result = verify(headers, body)
    except SignatureError as error:
        await _refuse(send, error, max_body_bytes)
        return
    scope.setdefault("state", {})["signature"] = result
    await app(scope, _replay(body, receive), send)


async def read_body(receive: Receive, *, max_bytes: int, content_length: str | None = None) -> bytes | None:
    """Return the whole request body, or None if the client disconnected first.

    Raises:
        SignatureError: ``body_too_large`` as soon as ``content_length`` or the bytes received exceed ``max_bytes``.
    """
    if content_length is not None and _announces_more_than(content_length, max_bytes):
        raise SignatureError("body_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] != "http.request":
            continue
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise SignatureError("body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def request_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Map lower-cased header names to values; a repeated header's values are joined with ", " (RFC 9110)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def path_matcher(paths: PathFilter) -> Callable[[str], bool]:
    """Turn a ``paths`` setting into a predicate on the request path."""
    if paths is None:
        return lambda _path: True
    if callable(paths):
        return paths
    prefixes = (paths,) if isinstance(paths, str) else tuple(paths)
    return lambda path: path.startswith(prefixes)


def check_max_body_bytes(max_body_bytes: int) -> int:
    """Return ``max_body_bytes`` if it is a positive integer."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes <= 0:
        raise ValueError("max_body_bytes must be a positive integer")
    return max_body_bytes


def _announces_more_than(content_length: str, max_bytes: int) -> bool:
    value = content_length.strip()
    if not (value.isascii() and value.isdigit()):
        return False  # not ours to judge; the bytes actually received are still counted
    # A 20-digit length is beyond any cap, and int() of thousands of digits would raise.
    return len(value) > 19 or int(value) > max_bytes


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, error: SignatureError, max_body_bytes: int) -> None:
    if error.reason == "body_too_large":
        status, code = 413, "payload_too_large"
        details: dict[str, object] = {"reason": error.reason, "max_bytes": max_body_bytes}
    else:
        status, code = 401, "invalid_signature"
        details = {"reason": error.reason}
    body = json.dumps({"error": {"code": code, "message": error.message, "details": details}}).encode()
    # No "connection: close": the server then discards the unread body instead of resetting the socket
    # under the client before it has read this answer.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
