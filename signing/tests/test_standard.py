"""Tests for the Standard Webhooks scheme: the reference library's own cases and vectors, a cross-check with it,
hostile headers, and the scheme behind the ASGI middleware."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import subprocess
import sys
import time
from math import floor
from unittest.mock import Mock

import httpx
import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import WebhookVerificationError

from reelay_signing import SignatureError, SignatureVerificationMiddleware
from reelay_signing.asgi import Receive, Scope, Send
from reelay_signing.errors import REASONS
from reelay_signing.standard import StandardWebhooksScheme, sign, sign_headers, verify_headers

# standard-webhooks libraries/python/tests/test_webhooks.py
DEFAULT_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
DEFAULT_PAYLOAD = '{"test": 2432232314}'
DEFAULT_SECRET = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOLERANCE = 300  # the reference library's hard-coded timedelta(minutes=5)

SECRET = "whsec_" + DEFAULT_SECRET
KEY = base64.b64decode(DEFAULT_SECRET)
NOW = 1_700_000_000


class PayloadForTesting:
    """The reference suite's fixture: headers signed by hand with hmac/base64, not by the code under test."""

    def __init__(self, timestamp: int | None = None) -> None:
        ts = str(floor(time.time()) if timestamp is None else timestamp)
        to_sign = f"{DEFAULT_MSG_ID}.{ts}.{DEFAULT_PAYLOAD}".encode()
        signature = base64.b64encode(hmac.new(KEY, to_sign, hashlib.sha256).digest()).decode("utf-8")
        self.id = DEFAULT_MSG_ID
        self.timestamp = ts
        self.payload = DEFAULT_PAYLOAD
        self.secret = SECRET  # the reference passes the bare base64; here only "whsec_" marks base64 (see below)
        self.signature = signature
        self.header = {
            "webhook-id": DEFAULT_MSG_ID,
            "webhook-signature": "v1," + signature,
            "webhook-timestamp": self.timestamp,
        }


def reason_of(payload: object, headers: object, secrets: object = SECRET, **kwargs: object) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_headers(payload, headers, secrets, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


# --- Ported from standard-webhooks libraries/python/tests/test_webhooks.py ------------------------------


def test_missing_id_raises_error() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_missing_id_raises_error
    test_payload = PayloadForTesting()
    del test_payload.header["webhook-id"]
    assert reason_of(test_payload.payload, test_payload.header) == "missing_header"


def test_timestamp_raises_error() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_timestamp_raises_error (missing timestamp)
    test_payload = PayloadForTesting()
    del test_payload.header["webhook-timestamp"]
    assert reason_of(test_payload.payload, test_payload.header) == "missing_header"


def test_invalid_timestamp_raises_error() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_invalid_timestamp_raises_error
    test_payload = PayloadForTesting()
    test_payload.header["webhook-timestamp"] = "hello"
    assert reason_of(test_payload.payload, test_payload.header) == "malformed_header"


def test_missing_signature_raises_error() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_missing_signature_raises_error
    test_payload = PayloadForTesting()
    del test_payload.header["webhook-signature"]
    assert reason_of(test_payload.payload, test_payload.header) == "missing_header"


def test_invalid_signature_raises_error() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_invalid_signature_raises_error
    test_payload = PayloadForTesting()
    test_payload.header["webhook-signature"] = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
    assert reason_of(test_payload.payload, test_payload.header) == "signature_mismatch"


def test_valid_signature_is_valid_and_returns_json() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_valid_signature_is_valid_and_returns_json
    # (we return the verified webhook id and leave JSON parsing to the caller)
    test_payload = PayloadForTesting()
    assert verify_headers(test_payload.payload, test_payload.header, test_payload.secret) == DEFAULT_MSG_ID


def test_valid_unbranded_signature_is_valid_and_returns_json() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_valid_unbranded_signature_is_valid_and_returns_json
    # (a leftover of svix's "svix-*" headers; here: the unbranded names verify, the branded ones are not read)
    test_payload = PayloadForTesting()
    unbranded = {name: test_payload.header[name] for name in ("webhook-id", "webhook-signature", "webhook-timestamp")}
    assert verify_headers(test_payload.payload, unbranded, test_payload.secret) == DEFAULT_MSG_ID
    branded = {name.replace("webhook-", "svix-"): value for name, value in unbranded.items()}
    assert reason_of(test_payload.payload, branded) == "missing_header"


def test_old_timestamp_fails() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_old_timestamp_fails
    test_payload = PayloadForTesting(NOW - TOLERANCE - 1)
    assert reason_of(test_payload.payload, test_payload.header, now=NOW) == "timestamp_too_old"


def test_new_timestamp_fails() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_new_timestamp_fails
    test_payload = PayloadForTesting(NOW + TOLERANCE + 1)
    assert reason_of(test_payload.payload, test_payload.header, now=NOW) == "timestamp_in_future"


def test_multi_sig_payload_is_valid() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_multi_sig_payload_is_valid
    test_payload = PayloadForTesting()
    sigs = [
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        test_payload.header["webhook-signature"],  # valid signature
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    ]
    test_payload.header["webhook-signature"] = " ".join(sigs)
    assert verify_headers(test_payload.payload, test_payload.header, test_payload.secret) == DEFAULT_MSG_ID


def test_signature_verification_with_and_without_prefix() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_signature_verification_with_and_without_prefix.
    # Deliberate difference: the reference base64-decodes every text secret; here only a "whsec_" secret is
    # base64 (Freepik/Magnific hand out raw text keys), so the bare base64 text is a different key.
    test_payload = PayloadForTesting()
    assert verify_headers(test_payload.payload, test_payload.header, "whsec_" + DEFAULT_SECRET) == DEFAULT_MSG_ID
    assert verify_headers(test_payload.payload, test_payload.header, KEY) == DEFAULT_MSG_ID
    assert reason_of(test_payload.payload, test_payload.header, DEFAULT_SECRET) == "signature_mismatch"


def test_sign_function() -> None:
    # standard-webhooks python tests/test_webhooks.py::test_sign_function (the published test vector)
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    timestamp = 1614265330
    payload = '{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(payload, key, msg_id=msg_id, timestamp=timestamp) == expected
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": expected}
    assert verify_headers(payload.encode(), headers, key, now=timestamp) == msg_id


# --- Ported from standard-webhooks spec/standard-webhooks.md -------------------------------------------

# spec "Signature scheme": the minified example body and its signed content
SPEC_MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
SPEC_TIMESTAMP = 1674087231
SPEC_BODY = (
    b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
    b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}'
)
SPEC_SIGNED_CONTENT = (
    b'msg_2KWPBgLlAfxdpx2AI54pPJ85f4W.1674087231.{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
    b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}'
)
# spec "Webhook headers": the example webhook-signature value, a v1 and a v1a (ed25519) signature
SPEC_SIGNATURE_HEADER = (
    "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= "
    "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg=="
)


def test_spec_signature_scheme_content_to_sign() -> None:
    # spec "Signature scheme": the content signed is {msg_id}.{timestamp}.{payload}, minified example
    digest = hmac.new(KEY, SPEC_SIGNED_CONTENT, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    assert sign(SPEC_BODY, SECRET, msg_id=SPEC_MSG_ID, timestamp=SPEC_TIMESTAMP) == expected


def test_spec_pretty_printed_example_is_a_different_payload() -> None:
    # spec "Signature scheme" note: the pretty-printed and the minified example are different signed bytes
    pretty = json.dumps(json.loads(SPEC_BODY), indent=2).encode()
    headers = sign_headers(SPEC_BODY, SECRET, msg_id=SPEC_MSG_ID, timestamp=SPEC_TIMESTAMP)
    assert reason_of(pretty, headers, now=SPEC_TIMESTAMP) == "signature_mismatch"
    assert verify_headers(SPEC_BODY, headers, SECRET, now=SPEC_TIMESTAMP) == SPEC_MSG_ID


def test_spec_example_headers_parse_and_v1a_is_skipped() -> None:
    # spec "Webhook headers" example: the v1 signature is checked (it was made with an unpublished key),
    # the v1a one is not ours to check
    headers = {
        "webhook-id": SPEC_MSG_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE_HEADER,
    }
    assert reason_of(SPEC_BODY, headers, now=SPEC_TIMESTAMP) == "signature_mismatch"
    v1a_only = {**headers, "webhook-signature": SPEC_SIGNATURE_HEADER.split(" ")[1]}
    assert reason_of(SPEC_BODY, v1a_only, now=SPEC_TIMESTAMP) == "no_signature"
    ours = sign(SPEC_BODY, SECRET, msg_id=SPEC_MSG_ID, timestamp=SPEC_TIMESTAMP)
    both = {**headers, "webhook-signature": f"{SPEC_SIGNATURE_HEADER} {ours}"}
    assert verify_headers(SPEC_BODY, both, SECRET, now=SPEC_TIMESTAMP) == SPEC_MSG_ID


# --- Cross-check with the standardwebhooks package, both directions -------------------------------------

PAYLOADS = ["", DEFAULT_PAYLOAD, '{"prompt": "caf\u00e9 \u2713 \U0001f3ac"}', '{\n  "a": [1, 2]\n}\n']


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("secret", [SECRET, KEY], ids=["whsec", "bytes"])
def test_reference_signed_headers_verify_here(payload: str, secret: str | bytes) -> None:
    webhook = standardwebhooks.Webhook(secret)
    when = datetime.datetime.fromtimestamp(NOW, tz=datetime.UTC)
    headers = {
        "webhook-id": DEFAULT_MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": webhook.sign(DEFAULT_MSG_ID, when, payload),
    }
    assert verify_headers(payload.encode(), headers, secret, now=NOW) == DEFAULT_MSG_ID


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("secret", [SECRET, KEY], ids=["whsec", "bytes"])
def test_headers_signed_here_verify_with_reference(payload: str, secret: str | bytes) -> None:
    # The reference reads the real clock with a fixed 5-minute tolerance, so sign at the real time.
    headers = sign_headers(payload.encode(), secret, msg_id=DEFAULT_MSG_ID, timestamp=int(time.time()))
    assert standardwebhooks.Webhook(secret).verify(payload.encode(), headers, json_parse=False) is None


def test_reference_refuses_a_tampered_body_signed_here() -> None:
    headers = sign_headers(DEFAULT_PAYLOAD, SECRET, msg_id=DEFAULT_MSG_ID, timestamp=int(time.time()))
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(DEFAULT_PAYLOAD + " ", headers)


def test_rotation_headers_verify_with_reference_under_either_secret() -> None:
    scheme = StandardWebhooksScheme([SECRET, "whsec_" + base64.b64encode(b"old-key-0123456789abcdef").decode()])
    headers = scheme.sign(b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, base64.b64encode(b"old-key-0123456789abcdef").decode()):
        assert standardwebhooks.Webhook(secret).verify(b"{}", headers, json_parse=False) is None


_MSG_IDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="."), min_size=1)


@given(
    payload=st.text(st.characters(exclude_categories=["Cs"])),
    key=st.binary(min_size=1, max_size=64),
    msg_id=_MSG_IDS,
    timestamp=st.integers(0, 10**10),
)
def test_signatures_agree_with_reference(payload: str, key: bytes, msg_id: str, timestamp: int) -> None:
    when = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    reference = standardwebhooks.Webhook(key).sign(msg_id, when, payload)
    assert sign(payload.encode(), key, msg_id=msg_id, timestamp=timestamp) == reference
    assert sign(payload.encode(), "whsec_" + base64.b64encode(key).decode(), msg_id=msg_id, timestamp=timestamp) == (
        reference
    )


# --- Secrets --------------------------------------------------------------------------------------------


def test_raw_text_secret_is_the_key_bytes() -> None:
    # Freepik/Magnific: "encode the secret key as bytes"; no whsec_ prefix, no base64.
    raw = "fpk-webhook-secret-123"
    expected = hmac.new(raw.encode(), b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert sign(b"{}", raw, msg_id="msg_1", timestamp=NOW) == "v1," + base64.b64encode(expected).decode()
    headers = sign_headers(b"{}", raw, msg_id="msg_1", timestamp=NOW)
    assert verify_headers(b"{}", headers, raw, now=NOW) == "msg_1"
    assert verify_headers(b"{}", headers, raw.encode(), now=NOW) == "msg_1"
    assert verify_headers(b"{}", headers, "whsec_" + base64.b64encode(raw.encode()).decode(), now=NOW) == "msg_1"


def test_whsec_secret_equals_its_decoded_bytes_and_may_omit_padding() -> None:
    key = b"twenty-five-byte-key!!!!!"  # base64 of 25 bytes ends in "=="
    padded = base64.b64encode(key).decode()
    assert padded.endswith("==")
    signatures = {
        sign(b"p", secret, msg_id="m", timestamp=NOW) for secret in (key, "whsec_" + padded, "whsec_" + padded[:-2])
    }
    assert len(signatures) == 1


@pytest.mark.parametrize(
    "secret",
    [
        "",
        b"",
        "whsec_",
        "whsec_=",
        "whsec_====",
        "whsec_not base64!",
        "whsec_@@@@",
        "whsec_YWJj-_",
        "whsec_a",
        "whsec_ YWJj",
        "whsec_YWJj\n",
        "whsec_\u00e9t\u00e9",
        "raw secret with spaces",
        "raw-secret\n",
        "\ud800",
        None,
        42,
        [],
        ["whsec_YWJj", ""],
    ],
)
def test_invalid_secret_is_refused(secret: object) -> None:
    headers = sign_headers(b"p", "whsec_YWJj", msg_id="m", timestamp=NOW)
    assert reason_of(b"p", headers, secret, now=NOW) == "invalid_secret"
    if isinstance(secret, str | bytes):
        with pytest.raises(SignatureError) as caught:
            sign(b"p", secret, msg_id="m", timestamp=NOW)
        assert caught.value.reason == "invalid_secret"


# --- Rotation, tolerance, payloads ----------------------------------------------------------------------


def test_any_secret_may_match_any_signature() -> None:
    old, new = "whsec_" + base64.b64encode(b"old-key").decode(), "raw-new-key"
    by_old = sign_headers(b"p", old, msg_id="m", timestamp=NOW)
    by_new = sign_headers(b"p", new, msg_id="m", timestamp=NOW)
    assert verify_headers(b"p", by_old, [new, old], now=NOW) == "m"
    assert verify_headers(b"p", by_new, [new, old], now=NOW) == "m"
    assert reason_of(b"p", by_old, [new], now=NOW) == "signature_mismatch"
    both = {**by_old, "webhook-signature": f"{by_new['webhook-signature']} {by_old['webhook-signature']}"}
    assert verify_headers(b"p", both, old, now=NOW) == "m"
    assert verify_headers(b"p", both, new, now=NOW) == "m"


def test_sign_headers_with_several_secrets_gives_one_v1_entry_each_and_each_verifies_alone() -> None:
    new, old = "whsec_" + base64.b64encode(b"new-key").decode(), "whsec_" + base64.b64encode(b"old-key").decode()
    body, now = b'{"a":1}', int(time.time())
    both = sign_headers(body, [new, old], msg_id="msg_1", timestamp=now)
    by_new, by_old = (sign(body, secret, msg_id="msg_1", timestamp=now) for secret in (new, old))
    assert both["webhook-signature"] == f"{by_new} {by_old}"
    assert sign_headers(body, (new,), msg_id="msg_1", timestamp=now) == sign_headers(
        body, new, msg_id="msg_1", timestamp=now
    )
    for secret in (new, old):  # a receiver holding only one of them, with the reference library
        assert standardwebhooks.Webhook(secret).verify(body, both, json_parse=False) is None
    with pytest.raises(SignatureError):
        sign_headers(b"p", [], msg_id="m", timestamp=now)


@pytest.mark.parametrize(("offset", "reason"), [(-301, "timestamp_too_old"), (301, "timestamp_in_future")])
def test_timestamp_outside_tolerance_is_refused(offset: int, reason: str) -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW + offset)
    assert reason_of(b"p", headers, now=NOW) == reason


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamps_at_the_tolerance_edges_pass(offset: int) -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW + offset)
    assert verify_headers(b"p", headers, SECRET, now=NOW) == "m"


def test_custom_tolerance_applies_both_ways() -> None:
    old = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW - 11)
    new = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW + 11)
    assert reason_of(b"p", old, tolerance=10, now=NOW) == "timestamp_too_old"
    assert reason_of(b"p", new, tolerance=10, now=NOW) == "timestamp_in_future"
    assert verify_headers(b"p", old, SECRET, tolerance=11, now=NOW) == "m"


def test_tolerance_none_accepts_any_timestamp() -> None:
    for timestamp in (0, NOW + 10**6):
        headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=timestamp)
        assert verify_headers(b"p", headers, SECRET, tolerance=None, now=NOW) == "m"


def test_default_clock_is_the_real_time() -> None:
    fresh = sign_headers(b"p", SECRET, msg_id="m", timestamp=int(time.time()))
    stale = sign_headers(b"p", SECRET, msg_id="m", timestamp=int(time.time()) - 400)
    assert verify_headers(b"p", fresh, SECRET) == "m"
    assert reason_of(b"p", stale) == "timestamp_too_old"


def test_a_bad_signature_is_reported_before_the_timestamp() -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW - 10**6)
    assert reason_of(b"other", headers, now=NOW) == "signature_mismatch"


@pytest.mark.parametrize(
    ("tolerance", "now"), [(-1, NOW), (float("nan"), NOW), (float("inf"), NOW), (300, float("nan"))]
)
def test_unusable_tolerance_or_clock_fails_closed(tolerance: float, now: float) -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW)
    with pytest.raises(ValueError, match="tolerance"):
        verify_headers(b"p", headers, SECRET, tolerance=tolerance, now=now)


def test_bytes_str_and_bytearray_payloads_are_the_same_bytes() -> None:
    text = '{"prompt": "caf\u00e9"}'
    headers = sign_headers(text, SECRET, msg_id="m", timestamp=NOW)
    assert headers == sign_headers(text.encode(), SECRET, msg_id="m", timestamp=NOW)
    for payload in (text, text.encode(), bytearray(text.encode())):
        assert verify_headers(payload, headers, SECRET, now=NOW) == "m"  # type: ignore[arg-type]
    assert reason_of(text.encode("latin-1"), headers, now=NOW) == "signature_mismatch"


def test_reserialized_json_does_not_verify() -> None:
    raw = b'{"id": "task_1",  "status":"COMPLETED", "generated": ["https://x/\\u00e9.mp4"]}'
    headers = sign_headers(raw, SECRET, msg_id="m", timestamp=NOW)
    reserialized = json.dumps(json.loads(raw)).encode()
    assert reserialized != raw
    assert reason_of(reserialized, headers, now=NOW) == "signature_mismatch"
    assert verify_headers(raw, headers, SECRET, now=NOW) == "m"


@pytest.mark.parametrize("payload", [None, 42, {}, ["p"], "\ud800"])
def test_payload_that_is_not_bytes_or_text_is_refused(payload: object) -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW)
    assert reason_of(payload, headers, now=NOW) == "invalid_payload"


def test_the_id_and_timestamp_are_signed() -> None:
    headers = sign_headers(b"p", SECRET, msg_id="msg_1", timestamp=NOW)
    assert reason_of(b"p", {**headers, "webhook-id": "msg_2"}, now=NOW) == "signature_mismatch"
    assert reason_of(b"p", {**headers, "webhook-timestamp": str(NOW + 1)}, now=NOW) == "signature_mismatch"


def test_header_names_are_case_insensitive() -> None:
    headers = sign_headers(b"p", SECRET, msg_id="m", timestamp=NOW)
    for change in (str.upper, str.title, str.lower):
        assert verify_headers(b"p", {change(name): value for name, value in headers.items()}, SECRET, now=NOW) == "m"


@pytest.mark.parametrize(
    ("msg_id", "timestamp"),
    [
        ("", NOW),
        ("a.b", NOW),
        ("a b", NOW),
        ("caf\u00e9", NOW),
        ("m" * 8193, NOW),
        ("m", -1),
        ("m", 10**12),
        ("m", True),
        ("m", 1.5),
    ],
)
def test_sign_refuses_what_the_verifier_would_reject(msg_id: str, timestamp: int) -> None:
    with pytest.raises(ValueError, match=r"msg_id|timestamp"):
        sign(b"p", SECRET, msg_id=msg_id, timestamp=timestamp)
    with pytest.raises(ValueError, match=r"msg_id|timestamp"):
        sign_headers(b"p", SECRET, msg_id=msg_id, timestamp=timestamp)


# --- Hostile headers ----------------------------------------------------------------------------------

VALID = sign_headers(b"payload", SECRET, msg_id="msg_1", timestamp=NOW)
VALID_SIG = VALID["webhook-signature"]
VALID_B64 = VALID_SIG.removeprefix("v1,")
# A message whose signature holds "+" or "/", so its url-safe spelling really differs.
URLSAFE_ID = next(
    f"msg_{n}" for n in range(100) if set("+/") & set(sign(b"payload", SECRET, msg_id=f"msg_{n}", timestamp=NOW))
)
URLSAFE_SIG = sign(b"payload", SECRET, msg_id=URLSAFE_ID, timestamp=NOW).replace("+", "-").replace("/", "_")


def with_(**changes: object) -> dict[str, object]:
    headers: dict[str, object] = dict(VALID)
    for name, value in changes.items():
        key = "webhook-" + name
        if value is None:
            del headers[key]
        else:
            headers[key] = value
    return headers


HOSTILE: list[tuple[str, object, str]] = [
    ("not a mapping", None, "malformed_header"),
    ("list of pairs", list(VALID.items()), "malformed_header"),
    ("no headers", {}, "missing_header"),
    ("empty id", with_(id=""), "missing_header"),
    ("empty timestamp", with_(timestamp=""), "missing_header"),
    ("empty signature", with_(signature=""), "missing_header"),
    ("duplicate id in two cases", {**VALID, "Webhook-Id": "msg_1"}, "malformed_header"),
    ("duplicate signature in two cases", {**VALID, "WEBHOOK-SIGNATURE": VALID_SIG}, "malformed_header"),
    ("non-text id", with_(id=12), "malformed_header"),
    ("non-text timestamp", with_(timestamp=NOW), "malformed_header"),
    ("non-text signature", with_(signature=[VALID_SIG]), "malformed_header"),
    ("non-ascii id", with_(id="msg_\u00e9"), "malformed_header"),
    ("lone surrogate id", with_(id="msg_\ud800"), "malformed_header"),
    ("id with '.'", with_(id="msg.1"), "malformed_header"),
    ("id with space", with_(id="msg 1"), "malformed_header"),
    ("id with NUL", with_(id="msg\x001"), "malformed_header"),
    ("9000-char id", with_(id="m" * 9000), "malformed_header"),
    ("non-numeric timestamp", with_(timestamp="now"), "malformed_header"),
    ("huge timestamp", with_(timestamp="99999999999999999999999999"), "malformed_header"),
    ("5000-digit timestamp", with_(timestamp="9" * 5000), "malformed_header"),
    ("negative timestamp", with_(timestamp=f"-{NOW}"), "malformed_header"),
    ("plus-signed timestamp", with_(timestamp=f"+{NOW}"), "malformed_header"),
    ("leading-zero timestamp", with_(timestamp=f"0{NOW}"), "malformed_header"),
    ("fractional timestamp", with_(timestamp=f"{NOW}.0"), "malformed_header"),
    ("exponent timestamp", with_(timestamp="1.7e9"), "malformed_header"),
    ("padded timestamp", with_(timestamp=f" {NOW} "), "malformed_header"),
    ("arabic-indic digits", with_(timestamp="\u0661\u0667\u0660\u0660"), "malformed_header"),
    ("fullwidth digits", with_(timestamp="\uff11\uff17"), "malformed_header"),
    ("timestamp nan", with_(timestamp="nan"), "malformed_header"),
    ("timestamp inf", with_(timestamp="inf"), "malformed_header"),
    ("non-ascii signature", with_(signature=VALID_SIG + "\u00e9"), "malformed_header"),
    ("invalid utf-8 bytes signature", with_(signature=b"v1,\xff\xfe"), "malformed_header"),
    ("latin-1 bytes signature", with_(signature="v1,caf\u00e9".encode("latin-1")), "malformed_header"),
    ("no comma", with_(signature="v1" + VALID_B64), "malformed_header"),
    ("empty version", with_(signature="," + VALID_B64), "malformed_header"),
    ("empty signature value", with_(signature="v1,"), "malformed_header"),
    ("two commas", with_(signature=VALID_SIG + ",x"), "malformed_header"),
    ("leading space", with_(signature=" " + VALID_SIG), "malformed_header"),
    ("trailing space", with_(signature=VALID_SIG + " "), "malformed_header"),
    ("double space", with_(signature=f"{VALID_SIG}  {VALID_SIG}"), "malformed_header"),
    ("tab separated", with_(signature=f"{VALID_SIG}\t{VALID_SIG}"), "malformed_header"),
    ("comma-space joined repeat", with_(signature=f"{VALID_SIG}, {VALID_SIG}"), "malformed_header"),
    ("trailing newline", with_(signature=VALID_SIG + "\n"), "malformed_header"),
    ("equals instead of comma", with_(signature="v1=" + VALID_B64), "malformed_header"),
    ("only spaces", with_(signature="   "), "malformed_header"),
    ("NUL in signature", with_(signature="v1,\x00"), "malformed_header"),
    ("100k-char signature", with_(signature="v1," + "A" * 100_000), "malformed_header"),
    ("3000 entries", with_(signature=" ".join(["v1,AAAA"] * 3000)), "malformed_header"),
    ("v1a only", with_(signature="v1a," + VALID_B64), "no_signature"),
    ("v2 and v0 only", with_(signature=f"v2,{VALID_B64} v0,{VALID_B64}"), "no_signature"),
    ("upper-case version", with_(signature="V1," + VALID_B64), "no_signature"),
    ("1600 short v1 entries", with_(signature=" ".join(["v1,A"] * 1600)), "signature_mismatch"),
    ("invalid base64", with_(signature="v1,!!!!not*base64"), "signature_mismatch"),
    ("unpadded base64", with_(signature=VALID_SIG.rstrip("=")), "signature_mismatch"),
    ("extra padding", with_(signature=VALID_SIG + "=="), "signature_mismatch"),
    ("url-safe base64", with_(id=URLSAFE_ID, signature=URLSAFE_SIG), "signature_mismatch"),
    ("hex signature", with_(signature="v1," + base64.b64decode(VALID_B64).hex()), "signature_mismatch"),
    ("truncated", with_(signature=VALID_SIG[:-2]), "signature_mismatch"),
    ("signature of another id", with_(id="msg_2"), "signature_mismatch"),
]


@pytest.mark.parametrize(("headers", "reason"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_headers_raise_signature_error(headers: object, reason: str) -> None:
    assert reason_of(b"payload", headers, now=NOW) == reason


def test_the_untampered_hostile_baseline_verifies() -> None:
    # Guards the table above: its cases fail because of the tampering, not because VALID is wrong.
    assert verify_headers(b"payload", VALID, SECRET, now=NOW) == "msg_1"
    assert verify_headers(b"payload", {k: v.encode() for k, v in VALID.items()}, SECRET, now=NOW) == "msg_1"  # type: ignore[misc]


_VALUES = st.one_of(
    st.text(),
    st.binary(),
    st.integers(-(10**30), 10**30).map(str),
    st.lists(
        st.tuples(st.sampled_from(["v1", "v1a", "v2", "", "V1", "v1 "]), st.sampled_from([",", "", ",,", "="])).flatmap(
            lambda vs: st.text(max_size=50).map(lambda value: vs[0] + vs[1] + value)
        ),
        max_size=6,
    ).map(" ".join),
    st.none(),
    st.integers(),
)
_NAMES = st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "Webhook-Id", "WEBHOOK-SIGNATURE"])


@given(
    values=st.dictionaries(st.one_of(_NAMES, st.text(max_size=20)), _VALUES, max_size=6),
    keep_valid=st.sets(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"])),
)
def test_arbitrary_header_values_raise_only_signature_error(values: dict[str, object], keep_valid: set[str]) -> None:
    headers: dict[str, object] = {name: VALID[name] for name in keep_valid}
    headers.update(values)
    try:
        verified = verify_headers(b"payload", headers, SECRET, now=NOW)  # type: ignore[arg-type]
    except SignatureError as error:
        verified = error.reason
    # Either the valid headers survived the overrides, or a SignatureError said why not.
    assert verified in {"msg_1", *REASONS}


@given(payload=st.binary(), msg_id=_MSG_IDS, tolerance=st.one_of(st.none(), st.integers(0, 10**6)))
def test_arbitrary_payloads_round_trip(payload: bytes, msg_id: str, tolerance: int | None) -> None:
    headers = sign_headers(payload, SECRET, msg_id=msg_id, timestamp=NOW)
    assert verify_headers(payload, headers, SECRET, tolerance=tolerance, now=NOW) == msg_id


# --- StandardWebhooksScheme -----------------------------------------------------------------------------


def test_scheme_signs_and_verifies_with_its_clock() -> None:
    clock = Mock(return_value=NOW)
    scheme = StandardWebhooksScheme([SECRET, "raw-old-key"], tolerance=60, clock=clock)
    headers = scheme.sign(b"payload", msg_id="msg_1")
    assert headers["webhook-timestamp"] == str(NOW)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert scheme.verify(headers, b"payload") == "msg_1"
    clock.return_value = NOW + 61
    with pytest.raises(SignatureError) as caught:
        scheme.verify(headers, b"payload")
    assert caught.value.reason == "timestamp_too_old"
    clock.return_value = NOW - 61
    with pytest.raises(SignatureError) as caught:
        scheme.verify(headers, b"payload")
    assert caught.value.reason == "timestamp_in_future"


def test_scheme_makes_a_fresh_id_per_message() -> None:
    scheme = StandardWebhooksScheme(SECRET, clock=lambda: NOW)
    first, second = scheme.sign(b"p"), scheme.sign(b"p")
    assert first["webhook-id"] != second["webhook-id"]
    assert first["webhook-id"].startswith("msg_")
    assert scheme.verify(first, b"p") == first["webhook-id"]
    assert scheme.sign(b"p", msg_id="m", timestamp=12345)["webhook-timestamp"] == "12345"


def test_scheme_accepts_a_retired_secret_after_rotation() -> None:
    old = StandardWebhooksScheme("raw-old-key", clock=lambda: NOW)
    rotated = StandardWebhooksScheme([SECRET, "raw-old-key"], clock=lambda: NOW)
    assert rotated.verify(old.sign(b"p", msg_id="m"), b"p") == "m"
    assert old.verify(rotated.sign(b"p", msg_id="m"), b"p") == "m"


def test_scheme_without_tolerance_ignores_the_clock() -> None:
    def broken_clock() -> float:
        raise AssertionError("the clock must not be read")

    scheme = StandardWebhooksScheme(SECRET, tolerance=None, clock=broken_clock)
    assert scheme.verify(sign_headers(b"p", SECRET, msg_id="m", timestamp=1), b"p") == "m"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"secrets": ""}, SignatureError),
        ({"secrets": []}, SignatureError),
        ({"secrets": "whsec_"}, SignatureError),
        ({"secrets": "whsec_!!"}, SignatureError),
        ({"tolerance": -1}, ValueError),
        ({"tolerance": float("nan")}, ValueError),
    ],
)
def test_scheme_refuses_bad_configuration_at_construction(kwargs: dict[str, object], error: type) -> None:
    config: dict[str, object] = {"secrets": SECRET, **kwargs}
    with pytest.raises(error):
        StandardWebhooksScheme(**config)  # type: ignore[arg-type]


async def test_scheme_plugs_into_the_asgi_middleware() -> None:
    seen: list[tuple[bytes, object]] = []

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        seen.append((message["body"], scope["state"]["signature"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    scheme = StandardWebhooksScheme(["raw-magnific-key", SECRET], clock=lambda: NOW)
    app = SignatureVerificationMiddleware(echo, verify=scheme.verify, max_body_bytes=1024)
    body = b'{"task_id": "t_1", "status": "COMPLETED", "note": "caf\xc3\xa9"}'
    headers = sign_headers(body, "raw-magnific-key", msg_id="msg_1", timestamp=NOW)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        good = await client.post("/webhooks/magnific", content=body, headers=headers)
        tampered = await client.post("/webhooks/magnific", content=body + b" ", headers=headers)
        stale = await client.post(
            "/webhooks/magnific",
            content=body,
            headers=sign_headers(body, SECRET, msg_id="msg_2", timestamp=NOW - 301),
        )
        repeated = await client.post(
            "/webhooks/magnific",
            content=body,
            headers=[*headers.items(), ("webhook-signature", headers["webhook-signature"])],
        )
    assert good.status_code == 200
    assert good.content == body
    assert seen == [(body, "msg_1")]
    assert tampered.status_code == 401
    assert tampered.json()["error"]["details"] == {"reason": "signature_mismatch"}
    assert stale.json()["error"]["details"] == {"reason": "timestamp_too_old"}
    # The middleware joins a repeated header with ", ", which is not a valid signature list.
    assert repeated.json()["error"]["details"] == {"reason": "malformed_header"}


# --- The module on its own ----------------------------------------------------------------------------


def test_module_needs_only_the_standard_library_and_the_error_type() -> None:
    code = (
        "import sys, reelay_signing.standard\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'litestar', 'storage', 'standardwebhooks'})\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_surface() -> None:
    import reelay_signing.standard

    assert sorted(reelay_signing.standard.__all__) == [
        "DEFAULT_TOLERANCE",
        "ID_HEADER",
        "MAX_HEADER_LENGTH",
        "SECRET_PREFIX",
        "SIGNATURE_HEADER",
        "StandardWebhooksScheme",
        "TIMESTAMP_HEADER",
        "sign",
        "sign_headers",
        "verify_headers",
    ]
