"""`reelay listen`: a local receiver for Reelay's webhooks that verifies each delivery with reelay_signing and
reports it in one line (type, job id, status, and "verified" or the reason it was refused)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import msgspec

from reelay_signing import SignatureError, SignatureVerificationMiddleware, StandardWebhooksScheme
from reelay_signing.asgi import ASGIApp, Receive, Scope, Send

# What an unverified body claims is shown, never trusted: each field cut to this length, control characters escaped.
MAX_FIELD_CHARS: Final = 80


def webhook_receiver(
    secrets: Sequence[str], *, report: Callable[[str], None], clock: Callable[[], float] = time.time
) -> ASGIApp:
    """An ASGI app that answers 204 to a delivery signed with any of ``secrets`` (rotation) and 401, with the
    reason, to every other request, on any path; ``report`` gets one line per request.

    Raises:
        SignatureError: ``invalid_secret`` when a secret is unusable (a ``whsec_`` secret that is not base64).
    """
    scheme = StandardWebhooksScheme(secrets, clock=clock)

    def verify(headers: Mapping[str, str], body: bytes) -> str:
        try:
            webhook_id = scheme.verify(headers, body)
        except SignatureError as error:
            report(delivery_line(body, headers.get("webhook-id"), error.reason, at=clock()))
            raise
        report(delivery_line(body, webhook_id, "verified", at=clock()))
        return webhook_id

    return SignatureVerificationMiddleware(_accept, verify=verify)


def delivery_line(body: bytes, webhook_id: str | None, verdict: str, *, at: float) -> str:
    """``HH:MM:SS  <type>  <job id>  <job status>  <verdict>  [<webhook-id>]``, with ``-`` for what the body lacks."""
    try:
        delivery = msgspec.json.decode(body)
    except msgspec.DecodeError:
        delivery = None
    fields = [
        time.strftime("%H:%M:%S", time.localtime(at)),
        _field(delivery, "type"),
        _field(delivery, "data", "job", "id"),
        _field(delivery, "data", "job", "status"),
        verdict,
    ]
    if webhook_id:
        fields.append(f"[{_shown(webhook_id)}]")
    return "  ".join(fields)


def _field(value: object, *path: str) -> str:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return _shown(value) if isinstance(value, str) and value else "-"


def _shown(text: str) -> str:
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[:MAX_FIELD_CHARS])
    return shown + "…" if len(text) > MAX_FIELD_CHARS else shown


async def _accept(scope: Scope, receive: Receive, send: Send) -> None:
    """Behind the verifier: 204 to every request that reached it; the lifespan protocol for the server."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
