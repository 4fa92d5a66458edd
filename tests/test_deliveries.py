"""The pure parts of caller webhook delivery: the body and headers of an attempt, the retry decision, Retry-After,
and the error texts, these last from real failed connections."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from pathlib import Path

import httpx
import msgspec
import standardwebhooks

from reelay_signing.standard import sign
from service import deliveries
from service.deliveries import Reply, decide, describe_error, retry_after_seconds
from service.egress import GuardedTransport
from service.hub import sse_frame
from storage import ClaimedDelivery, DeliveryRecord, DeliveryStatus, EventRecord, SigningSecret
from tests.ports import free_ports
from tests.test_egress import LOOPBACK, certificate, receiving, resolving

__all__ = ["certificate"]  # a fixture, used by name

NOW = 1_750_000_000.0
NEW = "whsec_" + "A" * 32
OLD = "whsec_" + "B" * 32
SCHEDULE = (0.0, 5.0, 300.0)


def delivery(**overrides: object) -> DeliveryRecord:
    fields: dict[str, object] = {
        "id": "msg_01JZ0000000000000000000000",
        "api_key_id": "key",
        "target": "we_1",
        "url": "https://hooks.example.com/reelay",
        "event_type": "job.succeeded",
        "status": DeliveryStatus.PENDING,
        "created_at": "2025-06-15T12:00:00.000Z",
        "updated_at": "2025-06-15T12:00:00.000Z",
        "job_id": "job_1",
        "endpoint_id": "we_1",
        "event_id": 7,
    }
    return DeliveryRecord(**{**fields, **overrides})  # type: ignore[arg-type]


EVENT = EventRecord(
    id=7,
    job_id="job_1",
    api_key_id="key",
    type="job.succeeded",
    created_at="2025-06-15T12:00:00.123Z",
    job=b'{"id":"job_1","status":"succeeded"}',
)


def claimed(signing: SigningSecret | None = None, **overrides: object) -> ClaimedDelivery:
    record = delivery(**overrides)
    return ClaimedDelivery(
        delivery=record,
        url=record.url,
        signing=signing or SigningSecret(secret=NEW),
        event=None if record.event_id is None else EVENT,
    )


def test_the_body_carries_the_sse_data_line_exactly() -> None:
    body = deliveries.body(claimed())
    data_line = sse_frame(EVENT).split(b"\ndata: ")[1].split(b"\n")[0]
    assert body == b'{"type":"job.succeeded","timestamp":"2025-06-15T12:00:00.123Z","data":%s}' % data_line
    assert msgspec.json.decode(body)["data"] == msgspec.json.decode(data_line)


def test_a_test_delivery_carries_its_payload() -> None:
    payload = b'{"endpoint_id":"we_1","message":"a test delivery from Reelay"}'
    body = deliveries.body(claimed(event_type="webhook.test", event_id=None, job_id=None, payload=payload))
    assert msgspec.json.decode(body) == {
        "type": "webhook.test",
        "timestamp": "2025-06-15T12:00:00.000Z",
        "data": msgspec.json.decode(payload),
    }


def test_during_a_rotation_both_secrets_sign_and_either_verifies_with_standardwebhooks() -> None:
    now = time.time()  # standardwebhooks checks the timestamp against its own clock
    rotated = SigningSecret(secret=NEW, previous=OLD, previous_expires_at=now + 60)
    body = deliveries.body(claimed())
    during = deliveries.headers(claimed(rotated), body, now)
    assert len(during["webhook-signature"].split(" ")) == 2
    assert during["webhook-id"] == delivery().id
    assert during["webhook-timestamp"] == str(int(now))
    assert during["content-type"] == "application/json"
    assert during["user-agent"].startswith("Reelay-Webhooks/")
    for secret in (NEW, OLD):
        assert standardwebhooks.Webhook(secret).verify(body, during)["type"] == "job.succeeded"
    after = deliveries.headers(claimed(rotated), body, now + 61)  # the overlap is over: the new secret alone
    assert after["webhook-signature"] == sign(body, NEW, msg_id=delivery().id, timestamp=int(now + 61))


def test_a_2xx_succeeds() -> None:
    result = decide(delivery(), SCHEDULE, at=NOW, duration=0.01, reply=Reply(204))
    assert result.status == DeliveryStatus.SUCCEEDED
    assert (result.attempt.status_code, result.attempt.error, result.attempt.duration_ms) == (204, None, 10.0)
    assert result.attempt.attempted_at == "2025-06-15T15:06:40.000Z"


def test_a_failure_is_retried_on_the_schedule_then_fails() -> None:
    first = decide(delivery(), SCHEDULE, at=NOW, duration=0.5, reply=Reply(500, b"oops"))
    assert (first.status, first.next_attempt_at) == (DeliveryStatus.PENDING, NOW + 0.5 + 5.0)
    assert first.attempt.response_body == "oops"
    second = decide(delivery(round_attempts=1), SCHEDULE, at=NOW, duration=0, reply=Reply(503))
    assert second.next_attempt_at == NOW + 300.0
    last = decide(delivery(round_attempts=2), SCHEDULE, at=NOW, duration=0, error="connection refused")
    assert (last.status, last.next_attempt_at, last.attempt.status_code) == (DeliveryStatus.FAILED, None, None)
    assert last.attempt.error == "connection refused"


def test_410_fails_at_once_and_disables_an_endpoint_but_not_a_job_url() -> None:
    gone = decide(delivery(), SCHEDULE, at=NOW, duration=0, reply=Reply(410))
    assert (gone.status, gone.disable_endpoint) == (DeliveryStatus.FAILED, "gone")
    per_job = decide(delivery(endpoint_id=None, target="url:x"), SCHEDULE, at=NOW, duration=0, reply=Reply(410))
    assert (per_job.status, per_job.disable_endpoint) == (DeliveryStatus.FAILED, None)


def test_a_redirect_is_a_failure_that_says_where_it_pointed() -> None:
    moved = Reply(301, location="https://new.example.com/hook")
    result = decide(delivery(), SCHEDULE, at=NOW, duration=0, reply=moved)
    assert result.status == DeliveryStatus.PENDING
    assert result.attempt.error == "redirect (301) to https://new.example.com/hook not followed"
    assert decide(delivery(), SCHEDULE, at=NOW, duration=0, reply=Reply(307)).attempt.error == (
        "redirect (307) without a Location not followed"
    )


def test_retry_after_is_honoured_when_longer_than_the_schedule_and_capped_at_a_day() -> None:
    def next_at(value: str) -> float | None:
        return decide(delivery(), SCHEDULE, at=NOW, duration=0, reply=Reply(429, retry_after=value)).next_attempt_at

    assert next_at("120") == NOW + 120
    assert next_at("1") == NOW + 5.0  # the schedule's delay when longer
    assert next_at(email.utils.formatdate(NOW + 600, usegmt=True)) == NOW + 600
    assert next_at("9999999") == NOW + 86400
    assert next_at("soon") == NOW + 5.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert retry_after_seconds("30", NOW) == 30
    assert retry_after_seconds(" 0 ", NOW) == 0
    assert retry_after_seconds(email.utils.formatdate(NOW + 90, usegmt=True), NOW) == 90
    assert retry_after_seconds(email.utils.formatdate(NOW - 90, usegmt=True), NOW) == 0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 -0000", NOW) == 0
    for bad in (None, "", "-5", "1.5", "tomorrow"):
        assert retry_after_seconds(bad, NOW) is None


def test_only_the_first_kilobyte_of_the_body_is_kept_and_bad_utf8_is_replaced() -> None:
    result = decide(delivery(), SCHEDULE, at=NOW, duration=0, reply=Reply(500, b"\xff" + b"x" * 5000))
    assert result.attempt.response_body == "\ufffd" + "x" * 1023


# -- the error texts, from real failures --------------------------------------------------------


async def error_of(url: str, transport: GuardedTransport | None = None, timeout: float = 5.0) -> str:
    async with httpx.AsyncClient(transport=transport or GuardedTransport(allow_private=True), timeout=timeout) as c:
        try:
            async with asyncio.timeout(timeout):
                await c.post(url, content=b"{}")
        except Exception as exc:
            return describe_error(exc, timeout)
    raise AssertionError("the request succeeded")


async def test_a_closed_port_is_connection_refused() -> None:
    assert await error_of(f"http://127.0.0.1:{free_ports(1)}/hook") == "connection refused"


async def test_a_receiver_that_never_answers_is_a_timeout() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(10)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert await error_of(f"http://127.0.0.1:{port}/hook", timeout=0.3) == "timeout after 0.3 s"


async def test_an_untrusted_certificate_is_a_tls_error(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    transport = GuardedTransport(allow_private=True, resolve=resolving({"receiver.test": [LOOPBACK]}))
    async with receiving(server_tls) as receiver:
        error = await error_of(receiver.url("receiver.test", "https"), transport)
    assert error.startswith("TLS: certificate verify failed: self"), error  # "self-signed certificate"


async def test_a_name_resolving_to_loopback_is_refused_naming_the_address_and_the_switch() -> None:
    transport = GuardedTransport(resolve=resolving({"receiver.test": [LOOPBACK]}))
    error = await error_of("http://receiver.test:9/hook", transport)
    assert error == (
        "refused: loopback address 127.0.0.1 (receiver.test resolves to it) "
        "(set REELAY_WEBHOOK_ALLOW_PRIVATE=true to allow private and loopback receivers)"
    )
    link_local = await error_of("http://169.254.169.254/latest", GuardedTransport(allow_private=True))
    assert link_local == "refused: link-local address 169.254.169.254"
