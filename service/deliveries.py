"""Caller webhook deliveries, without I/O: the body and headers of an attempt, what its outcome means for the
delivery (done, retried when, or failed), and error texts that say what happened."""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import httpx
import msgspec

from reelay_signing.standard import sign_headers
from service.egress import TargetRefused, check_target
from service.errors import InvalidRequest
from service.hub import event_data
from service.timestamps import to_iso
from service.vocabulary import EVENT_TYPES
from storage import AttemptRecord, AttemptResult, ClaimedDelivery, DeliveryRecord, DeliveryStatus

BODY_KEPT: Final = 1024  # bytes of a response body the attempt log keeps
MAX_RETRY_AFTER: Final = 86400.0  # a receiver's Retry-After is honoured up to a day
ALLOW_PRIVATE_HINT: Final = "set REELAY_WEBHOOK_ALLOW_PRIVATE=true to allow private and loopback receivers"


def _version() -> str:
    try:
        return version("reelay")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0"


USER_AGENT: Final = f"Reelay-Webhooks/{_version()}"
_encode = msgspec.json.Encoder().encode


# -- at registration -----------------------------------------------------------------------


def check_url(url: str, *, allow_private: bool, field: str = "webhook_url") -> str:
    """`url` if Reelay may send webhooks to it; else a 400 `invalid_webhook_url` with the refusal's details."""
    try:
        check_target(url, allow_private=allow_private)
    except TargetRefused as refused:
        hint = f"; {ALLOW_PRIVATE_HINT}" if refused.reason in ("private", "loopback") else ""
        raise InvalidRequest(
            f"{field}: {refused.message}{hint}",
            code="invalid_webhook_url",
            details={"field": field, **refused.details},
        ) from None
    return url


def check_events(events: Sequence[str], *, field: str) -> list[str]:
    """An event filter: known event types (each once, in the order given), or `["*"]` for every type."""
    if list(events) == ["*"]:
        return ["*"]
    unknown = [event for event in events if event not in EVENT_TYPES]
    if unknown or not events:
        problem = f"unknown event type {unknown[0]!r}" if unknown else "at least one event type is needed"
        raise InvalidRequest(
            f'{field}: {problem}; give event types from {", ".join(EVENT_TYPES)}, or ["*"] for all',
            details={"field": field, "allowed": [*EVENT_TYPES, "*"], **({"unknown": unknown} if unknown else {})},
        )
    return list(dict.fromkeys(events))


# -- an attempt ------------------------------------------------------------------------------


def body(claimed: ClaimedDelivery) -> bytes:
    """`{"type", "timestamp", "data"}`: data is the event exactly as its SSE data line (or a test's payload)."""
    delivery = claimed.delivery
    if claimed.event is not None:
        data, timestamp = event_data(claimed.event), claimed.event.created_at
    else:
        data, timestamp = delivery.payload or b"{}", delivery.created_at
    return b'{"type":%s,"timestamp":%s,"data":%s}' % (_encode(delivery.event_type), _encode(timestamp), data)


def headers(claimed: ClaimedDelivery, payload: bytes, now: float) -> dict[str, str]:
    """The Standard Webhooks headers (one signature per secret that signs at `now`) and the request's own."""
    secrets = claimed.signing.signing(now)
    return {
        **sign_headers(payload, secrets, msg_id=claimed.delivery.id, timestamp=int(now)),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "accept-encoding": "identity",  # the kept body is the first bytes as sent, never a decompressed bomb
    }


@dataclass(frozen=True)
class Reply:
    """What a receiver answered: its status, the headers that matter, and the first bytes of its body."""

    status_code: int
    body: bytes = b""
    location: str | None = None
    retry_after: str | None = None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from `now`, at most a day; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC without saying so
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def decide(
    delivery: DeliveryRecord,
    schedule: Sequence[float],
    *,
    at: float,
    duration: float,
    reply: Reply | None = None,
    error: str | None = None,
) -> AttemptResult:
    """The attempt started at `at` and taking `duration` seconds, and the delivery's next state.

    A 2xx succeeds. Anything else retries after the schedule's next delay (or the receiver's Retry-After, when
    longer) while the schedule has one; a 410 fails at once and disables an endpoint. `reply` is None when no
    answer came, and `error` then says why.
    """
    ended = at + duration
    disable = None
    final = False
    retry_after = None
    if reply is not None:
        code = reply.status_code
        if 200 <= code < 300:
            error = None
        elif 300 <= code < 400:
            where = f"to {reply.location}" if reply.location else "without a Location"
            error = f"redirect ({code}) {where} not followed"
        elif code == 410:
            final = True
            disable = "gone" if delivery.endpoint_id is not None else None
            error = "gone (410): the endpoint is disabled" if disable else "gone (410): not retried"
        retry_after = retry_after_seconds(reply.retry_after, ended)
    attempt = AttemptRecord(
        delivery_id=delivery.id,
        attempted_at=to_iso(at),
        duration_ms=round(duration * 1000, 3),
        status_code=None if reply is None else reply.status_code,
        response_body=None if reply is None else reply.body[:BODY_KEPT].decode("utf-8", errors="replace"),
        error=error,
    )
    if reply is not None and 200 <= reply.status_code < 300:
        return AttemptResult(attempt=attempt, status=DeliveryStatus.SUCCEEDED, at=at)
    done = delivery.round_attempts + 1  # attempts of this round, this one included
    if final or done >= len(schedule):
        return AttemptResult(attempt=attempt, status=DeliveryStatus.FAILED, at=at, disable_endpoint=disable)
    delay = max(schedule[done], retry_after or 0.0)
    return AttemptResult(attempt=attempt, status=DeliveryStatus.PENDING, at=at, next_attempt_at=ended + delay)


def describe_error(exc: BaseException, timeout_seconds: float) -> str:
    """What went wrong with an attempt that got no answer, in words for the attempt log."""
    if isinstance(exc, TargetRefused):
        if exc.address is None:
            return f"refused: {exc.message}"
        kind = exc.reason.replace("_", "-")
        hint = f" ({ALLOW_PRIVATE_HINT})" if exc.reason in ("private", "loopback") else ""
        via = "" if exc.host in (None, exc.address) else f" ({exc.host} resolves to it)"
        return f"refused: {kind} address {exc.address}{via}{hint}"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timeout after {timeout_seconds:g} s"
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS: certificate verify failed: " + text.partition("certificate verify failed: ")[2].split(" (_ssl")[0]
    if "[SSL" in text:
        return f"TLS: {text}"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"connection closed without a complete response: {text}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}"
    if isinstance(exc, httpx.TransportError):
        return f"network error: {text}"
    return f"{type(exc).__name__}: {text}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
