"""Tests for the t=<unix>,v1=<hex> scheme: Stripe's own cases, a cross-check with stripe, hostile headers."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import subprocess
import sys
import time
from unittest.mock import Mock

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from reelay_signing import SignatureError, TimestampedScheme, compute_signature, sign_header, verify_header
from reelay_signing.errors import REASONS

# stripe-python tests/test_webhook.py
DUMMY_WEBHOOK_PAYLOAD = """{
  "id": "evt_test_webhook",
  "object": "event",
  "data": { "object": { "id": "rdr_123", "object": "terminal.reader" } }
}"""
DUMMY_WEBHOOK_SECRET = "whsec_test_secret"
# stripe-node test/Webhook.spec.ts: JSON.stringify(EVENT_PAYLOAD, null, 2)
EVENT_PAYLOAD_STRING = json.dumps({"id": "evt_test_webhook", "object": "event"}, indent=2)
SECRET = "whsec_test_secret"

NOW = 1_700_000_000
HEADER = "X-Seedancee2-Signature"


def generate_header(
    *,
    timestamp: int | None = None,
    payload: str | bytes = DUMMY_WEBHOOK_PAYLOAD,
    secret: str = DUMMY_WEBHOOK_SECRET,
    scheme: str = "v1",
    signature: str | None = None,
) -> str:
    """Same knobs as stripe-python's generate_header / stripe-node's generateTestHeaderString."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    body = payload.encode() if isinstance(payload, str) else payload
    if signature is None:
        signature = compute_signature(body, secret, timestamp)
    return f"t={timestamp},{scheme}={signature}"


def reason_of(payload: object, header: object, secrets: object = SECRET, **kwargs: object) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_header(payload, header, secrets, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


# --- Ported from stripe-python tests/test_webhook.py -------------------------------------------------


def test_raise_on_malformed_header() -> None:
    # stripe-python TestWebhookSignature.test_raise_on_malformed_header;
    # stripe-node verifyHeader "should raise ... when the header does not have the expected format"
    header = "i'm not even a real signature header"
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header) == "malformed_header"


def test_raise_on_no_signatures_with_expected_scheme() -> None:
    # stripe-python TestWebhookSignature.test_raise_on_no_signatures_with_expected_scheme;
    # stripe-node verifyHeader "... when there are no signatures with the expected scheme"
    header = generate_header(scheme="v0")
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header) == "no_signature"


def test_raise_on_no_valid_signatures_for_payload() -> None:
    # stripe-python TestWebhookSignature.test_raise_on_no_valid_signatures_for_payload;
    # stripe-node verifyHeader "... when there are no valid signatures for the payload"
    header = generate_header(signature="bad_signature")
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header) == "signature_mismatch"


def test_raise_on_timestamp_outside_tolerance() -> None:
    # stripe-python TestWebhookSignature.test_raise_on_timestamp_outside_tolerance;
    # stripe-node verifyHeader "... when the timestamp is not within the tolerance of Date.now()"
    header = generate_header(timestamp=int(time.time()) - 15)
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header, tolerance=10) == "timestamp_too_old"


def test_valid_header_and_signature() -> None:
    # stripe-python TestWebhookSignature.test_valid_header_and_signature;
    # stripe-node verifyHeader "should return true when the header contains a valid signature and the
    # timestamp is within the tolerance of Date.now()"
    timestamp = int(time.time())
    header = generate_header(timestamp=timestamp)
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, DUMMY_WEBHOOK_SECRET, tolerance=10) == timestamp


def test_header_contains_valid_signature() -> None:
    # stripe-python TestWebhookSignature.test_header_contains_valid_signature
    header = generate_header(timestamp=NOW) + ",v1=bad_signature"
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, DUMMY_WEBHOOK_SECRET, tolerance=10, now=NOW) == NOW


def test_timestamp_off_but_no_tolerance() -> None:
    # stripe-python TestWebhookSignature.test_timestamp_off_but_no_tolerance;
    # stripe-node verifyHeader "... the timestamp is off but no tolerance is provided".
    # Stripe's default tolerance there is "none"; ours is 300 s, so None is passed explicitly.
    header = generate_header(timestamp=12345)
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, DUMMY_WEBHOOK_SECRET, tolerance=None) == 12345
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header) == "timestamp_too_old"


def test_construct_event() -> None:
    # stripe-python TestWebhook.test_construct_event (signature part; we do not parse JSON);
    # stripe-node constructEvent "should return an Event instance from a valid JSON payload and valid
    # signature header"
    header = generate_header()
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, DUMMY_WEBHOOK_SECRET) > 0


def test_raise_on_invalid_header() -> None:
    # stripe-python TestWebhook.test_raise_on_invalid_header;
    # stripe-node constructEvent "should raise a SignatureVerificationError from a valid JSON payload and
    # an invalid signature header" (header 'bad_header')
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, "bad_header") == "malformed_header"


def test_construct_event_from_bytearray() -> None:
    # stripe-python TestWebhook.test_construct_event_from_bytearray
    header = generate_header(timestamp=NOW)
    payload = bytearray(DUMMY_WEBHOOK_PAYLOAD, "utf-8")
    assert verify_header(payload, header, DUMMY_WEBHOOK_SECRET, now=NOW) == NOW


def test_construct_event_from_bytes() -> None:
    # stripe-python TestWebhook.test_construct_event_from_bytes
    header = generate_header(timestamp=NOW)
    payload = bytes(DUMMY_WEBHOOK_PAYLOAD, "utf-8")
    assert verify_header(payload, header, DUMMY_WEBHOOK_SECRET, now=NOW) == NOW


# --- Ported from stripe-node test/Webhook.spec.ts -------------------------------------------------------


def test_should_correctly_construct_a_webhook_header() -> None:
    # stripe-node .generateTestHeaderString "should correctly construct a webhook header"
    header = sign_header(EVENT_PAYLOAD_STRING.encode(), SECRET, timestamp=NOW)
    assert len(header.split(",")) == 2


def test_payload_and_header_with_type_buffer() -> None:
    # stripe-node constructEvent "... from a payload and header with type Buffer";
    # verifyHeader "should accept Buffer instances for the payload and header"
    header = generate_header(timestamp=NOW, payload=EVENT_PAYLOAD_STRING)
    assert verify_header(EVENT_PAYLOAD_STRING.encode(), header.encode(), SECRET, now=NOW) == NOW


def test_payload_and_header_with_type_uint8array() -> None:
    # stripe-node constructEvent "... from a payload and header with type Uint8Array"
    header = generate_header(timestamp=NOW, payload=EVENT_PAYLOAD_STRING)
    payload, raw_header = bytearray(EVENT_PAYLOAD_STRING.encode()), bytearray(header.encode())
    assert verify_header(payload, raw_header, SECRET, now=NOW) == NOW


@pytest.mark.parametrize(("payload", "reason"), [(None, "invalid_payload"), ("", "malformed_header")])
def test_no_webhook_payload_was_provided(payload: str | None, reason: str) -> None:
    # stripe-node constructEvent "No webhook payload was provided" (null/undefined/'' with 'bad_header').
    # Unlike Stripe, an empty body is a payload like any other here, so '' fails on the bad header instead.
    assert reason_of(payload, "bad_header") == reason


def test_should_error_if_you_pass_a_signature_which_is_an_array() -> None:
    # stripe-node constructEvent "should error if you pass a signature which is an array"
    header = generate_header(payload=EVENT_PAYLOAD_STRING)
    assert reason_of(EVENT_PAYLOAD_STRING, [header]) == "malformed_header"


@pytest.mark.parametrize("header", [None, ""])
def test_header_is_null_or_empty(header: str | None) -> None:
    # stripe-node verifyHeader "should raise a SignatureVerificationError when the header is null or empty"
    # (null and undefined are both None in Python)
    assert reason_of(EVENT_PAYLOAD_STRING, header) == "missing_header"


def test_timestamp_not_within_tolerance_of_provided_timestamp() -> None:
    # stripe-node verifyHeader "... the timestamp is not within the tolerance of the provided timestamp"
    # (receivedAt = 20000000 ms there; `now` is in seconds here)
    received_at = 20_000
    header = generate_header(timestamp=received_at - 15, payload=EVENT_PAYLOAD_STRING)
    assert reason_of(EVENT_PAYLOAD_STRING, header, tolerance=10, now=received_at) == "timestamp_too_old"


def test_valid_signature_within_tolerance_of_provided_timestamp() -> None:
    # stripe-node verifyHeader "should return true when the header contains a valid signature and the
    # timestamp is within the tolerance of the provided timestamp"
    received_at = 20_000
    header = generate_header(timestamp=received_at - 9, payload=EVENT_PAYLOAD_STRING)
    assert verify_header(EVENT_PAYLOAD_STRING, header, SECRET, tolerance=10, now=received_at) == 19_991


def test_header_contains_at_least_one_valid_signature() -> None:
    # stripe-node verifyHeader "should return true when the header contains at least one valid signature"
    header = generate_header(timestamp=int(time.time()), payload=EVENT_PAYLOAD_STRING) + ",v1=potato"
    assert verify_header(EVENT_PAYLOAD_STRING, header, SECRET, tolerance=10) > 0


@pytest.mark.parametrize("payload", [{}, datetime.datetime.now(datetime.UTC)])
def test_payload_is_of_an_unknown_type(payload: object) -> None:
    # stripe-node verifyHeader "should raise a SignatureVerificationError when payload is of an unknown type"
    header = generate_header(payload=EVENT_PAYLOAD_STRING)
    assert reason_of(payload, header) == "invalid_payload"


def test_signing_secret_contains_whitespace() -> None:
    # stripe-node verifyHeader "should raise a SignatureVerificationError when the signing secret contains
    # whitespace"
    header = generate_header(payload=EVENT_PAYLOAD_STRING)
    assert reason_of(EVENT_PAYLOAD_STRING, header, SECRET + " ") == "invalid_secret"


def test_should_use_current_timestamp_when_timestamp_is_not_provided() -> None:
    # stripe-node "generateTestHeaderString ... should use current timestamp when timestamp is not provided"
    scheme = TimestampedScheme(SECRET, header_name=HEADER)
    before = int(time.time())
    header = scheme.sign(EVENT_PAYLOAD_STRING)[HEADER]
    after = int(time.time())
    assert before <= int(header.split(",")[0].removeprefix("t=")) <= after


def test_should_use_provided_timestamp_when_given() -> None:
    # stripe-node "generateTestHeaderString ... should use provided timestamp when given"
    header = sign_header(EVENT_PAYLOAD_STRING, SECRET, timestamp=1234567890)
    assert int(header.split(",")[0].removeprefix("t=")) == 1234567890


def test_accept_recent_timestamps_when_tolerance_is_omitted() -> None:
    # stripe-node "verifyHeader ... should use 0 and accept recent timestamps when tolerance is omitted"
    # (our omitted tolerance is 300 s rather than "none"; a 100 s old timestamp passes either way)
    header = generate_header(timestamp=int(time.time()) - 100, payload=EVENT_PAYLOAD_STRING)
    assert verify_header(EVENT_PAYLOAD_STRING, header, SECRET) > 0


def test_should_use_default_tolerance_when_tolerance_is_omitted() -> None:
    # stripe-node "constructEvent ... should use DEFAULT_TOLERANCE when tolerance is omitted"
    header = generate_header(timestamp=int(time.time()) - 400, payload=EVENT_PAYLOAD_STRING)
    assert reason_of(EVENT_PAYLOAD_STRING, header) == "timestamp_too_old"


def test_recent_timestamp_with_explicit_default_tolerance() -> None:
    # stripe-node "verifyHeader ... should use default cryptoProvider when cryptoProvider is omitted" and
    # "constructEvent ... should succeed without cryptoProvider argument" (both pass tolerance 300)
    header = generate_header(timestamp=int(time.time()), payload=EVENT_PAYLOAD_STRING)
    assert verify_header(EVENT_PAYLOAD_STRING, header, SECRET, tolerance=300) > 0


def test_should_work_when_tolerance_is_omitted() -> None:
    # stripe-node "verifyHeader ... should work when both tolerance and cryptoProvider are omitted" and
    # "constructEvent ... should succeed with a recent timestamp when tolerance is omitted"
    header = generate_header(timestamp=int(time.time()), payload=EVENT_PAYLOAD_STRING)
    assert verify_header(EVENT_PAYLOAD_STRING, header, SECRET) > 0


# --- Cross-check with the stripe package -----------------------------------------------------------------

PAYLOADS = ["", DUMMY_WEBHOOK_PAYLOAD, '{"prompt": "caf\u00e9 \u2713 \U0001f3ac"}']


@pytest.mark.parametrize("payload", PAYLOADS)
def test_stripe_made_header_verifies_here(payload: str) -> None:
    header = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=NOW)
    assert verify_header(payload.encode(), header, SECRET, now=NOW) == NOW


@pytest.mark.parametrize("payload", PAYLOADS)
def test_header_made_here_verifies_with_stripe(payload: str) -> None:
    header = sign_header(payload.encode(), SECRET, timestamp=int(time.time()))
    assert stripe.WebhookSignature.verify_header(payload, header, SECRET, tolerance=300) is True


def test_rotation_header_verifies_with_stripe_under_either_secret() -> None:
    header = sign_header(b"{}", ["whsec_new", "whsec_old"], timestamp=int(time.time()))
    assert stripe.WebhookSignature.verify_header("{}", header, "whsec_new", tolerance=300) is True
    assert stripe.WebhookSignature.verify_header("{}", header, "whsec_old", tolerance=300) is True


_NO_WHITESPACE = st.text(st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc"]), min_size=1, max_size=40)


@given(
    payload=st.text(st.characters(exclude_categories=["Cs"])), secret=_NO_WHITESPACE, timestamp=st.integers(0, 10**10)
)
def test_signatures_agree_with_stripe(payload: str, secret: str, timestamp: int) -> None:
    ours = compute_signature(payload.encode(), secret, timestamp)
    assert ours == stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)


# --- Behaviour beyond Stripe's suites ---------------------------------------------------------------


def test_future_timestamp_beyond_tolerance_is_refused() -> None:
    header = generate_header(timestamp=NOW + 301)
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header, now=NOW) == "timestamp_in_future"


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamps_at_the_tolerance_edges_pass(offset: int) -> None:
    header = generate_header(timestamp=NOW + offset)
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, SECRET, now=NOW) == NOW + offset


def test_tolerance_none_accepts_far_future_timestamps() -> None:
    header = generate_header(timestamp=NOW + 10**6)
    assert verify_header(DUMMY_WEBHOOK_PAYLOAD, header, SECRET, tolerance=None, now=NOW) == NOW + 10**6


def test_bad_signature_is_reported_before_stale_timestamp() -> None:
    header = generate_header(timestamp=NOW - 10_000, signature="0" * 64)
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header, now=NOW) == "signature_mismatch"


def test_verifies_the_raw_bytes_not_equivalent_json() -> None:
    header = sign_header(b'{"a": 1}', SECRET, timestamp=NOW)
    assert reason_of(b'{"a":1}', header, now=NOW) == "signature_mismatch"


def test_str_payload_is_its_utf8_bytes() -> None:
    text = '{"prompt": "caf\u00e9"}'
    header = sign_header(text.encode("utf-8"), SECRET, timestamp=NOW)
    assert verify_header(text, header, SECRET, now=NOW) == NOW
    assert reason_of(text.encode("latin-1"), header, now=NOW) == "signature_mismatch"


def test_signature_follows_the_documented_formula() -> None:
    expected = hmac.new(b"k", b"1700000000." + b"body", hashlib.sha256).hexdigest()
    assert compute_signature(b"body", "k", NOW) == expected
    assert sign_header(b"body", b"k", timestamp=NOW) == f"t={NOW},v1={expected}"


def test_any_of_several_secrets_verifies() -> None:
    header = sign_header(b"x", "whsec_old", timestamp=NOW)
    assert verify_header(b"x", header, ["whsec_new", "whsec_old"], now=NOW) == NOW
    assert reason_of(b"x", header, ["whsec_new"], now=NOW) == "signature_mismatch"


def test_signing_with_several_secrets_writes_one_v1_each() -> None:
    header = sign_header(b"x", ["a", b"b"], timestamp=NOW)
    assert header.count(",v1=") == 2
    assert verify_header(b"x", header, "b", now=NOW) == NOW


@pytest.mark.parametrize("secrets", ["", b"", [], None, 42, ["ok", ""], "tab\tsecret", "\ud800"])
def test_unusable_secrets_are_refused(secrets: object) -> None:
    header = generate_header(timestamp=NOW)
    assert reason_of(DUMMY_WEBHOOK_PAYLOAD, header, secrets, now=NOW) == "invalid_secret"


def test_unencodable_str_payload_is_refused() -> None:
    assert reason_of("\ud800", generate_header(timestamp=NOW), now=NOW) == "invalid_payload"


@pytest.mark.parametrize("timestamp", [-1, 10**12, True, 1.5])
def test_sign_refuses_timestamps_the_verifier_would_reject(timestamp: int) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        sign_header(b"x", SECRET, timestamp=timestamp)


@pytest.mark.parametrize(("tolerance", "now"), [(-1, NOW), (float("nan"), NOW), (300, float("nan"))])
def test_unusable_tolerance_or_clock_fails_closed(tolerance: float, now: float) -> None:
    header = generate_header(timestamp=NOW)
    with pytest.raises(ValueError, match="tolerance"):
        verify_header(DUMMY_WEBHOOK_PAYLOAD, header, SECRET, tolerance=tolerance, now=now)


def test_error_carries_reason_and_message() -> None:
    error = SignatureError("timestamp_too_old")
    assert error.reason == "timestamp_too_old"
    assert str(error) == error.message != ""
    assert set(REASONS) >= {
        "missing_header",
        "malformed_header",
        "no_signature",
        "signature_mismatch",
        "timestamp_too_old",
        "timestamp_in_future",
        "body_too_large",
        "invalid_secret",
    }


# --- TimestampedScheme ------------------------------------------------------------------------------


def test_scheme_signs_and_verifies_with_its_clock() -> None:
    clock = Mock(return_value=NOW)
    scheme = TimestampedScheme(["whsec_new", "whsec_old"], header_name=HEADER, tolerance=60, clock=clock)
    headers = scheme.sign(b"payload")
    assert list(headers) == [HEADER]
    assert scheme.verify(headers, b"payload") == NOW
    clock.return_value = NOW + 61
    with pytest.raises(SignatureError) as caught:
        scheme.verify(headers, b"payload")
    assert caught.value.reason == "timestamp_too_old"
    clock.return_value = NOW - 61
    with pytest.raises(SignatureError) as caught:
        scheme.verify(headers, b"payload")
    assert caught.value.reason == "timestamp_in_future"


def test_scheme_reads_its_header_case_insensitively() -> None:
    scheme = TimestampedScheme(SECRET, header_name=HEADER, clock=lambda: NOW)
    value = scheme.sign(b"p")[HEADER]
    assert scheme.verify({HEADER.lower(): value, "content-type": "application/json"}, b"p") == NOW
    assert scheme.verify({HEADER.upper(): value}, b"p") == NOW


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_header"),
        ({"Stripe-Signature": "t=1,v1=00"}, "missing_header"),
        ({HEADER: ""}, "missing_header"),
        ({HEADER.lower(): "t=1,v1=00", HEADER.upper(): "t=1,v1=00"}, "malformed_header"),
    ],
)
def test_scheme_refuses_missing_or_repeated_header(headers: dict[str, str], reason: str) -> None:
    scheme = TimestampedScheme(SECRET, header_name=HEADER, clock=lambda: NOW)
    with pytest.raises(SignatureError) as caught:
        scheme.verify(headers, b"p")
    assert caught.value.reason == reason


def test_scheme_accepts_header_from_a_retired_secret_after_rotation() -> None:
    old = TimestampedScheme("whsec_old", header_name=HEADER, clock=lambda: NOW)
    rotated = TimestampedScheme(["whsec_new", "whsec_old"], header_name=HEADER, clock=lambda: NOW)
    assert rotated.verify(old.sign(b"p"), b"p") == NOW
    assert old.verify(rotated.sign(b"p"), b"p") == NOW


def test_scheme_without_tolerance_ignores_the_clock() -> None:
    scheme = TimestampedScheme(SECRET, header_name=HEADER, tolerance=None, clock=lambda: NOW)
    assert scheme.verify(scheme.sign(b"p", timestamp=12345), b"p") == 12345


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"secrets": ""}, SignatureError),
        ({"secrets": []}, SignatureError),
        ({"header_name": ""}, ValueError),
        ({"header_name": "X-Sig\r\nInjected: 1"}, ValueError),
        ({"tolerance": -1}, ValueError),
    ],
)
def test_scheme_refuses_bad_configuration_at_construction(kwargs: dict[str, object], error: type) -> None:
    config: dict[str, object] = {"secrets": SECRET, "header_name": HEADER, **kwargs}
    with pytest.raises(error):
        TimestampedScheme(**config)  # type: ignore[arg-type]


# --- Hostile headers --------------------------------------------------------------------------------

VALID_SIG = compute_signature(b"payload", SECRET, NOW)

HOSTILE_HEADERS: list[tuple[str, object, str]] = [
    ("non-ascii", f"t={NOW},v1={VALID_SIG}\u00e9", "malformed_header"),
    ("non-ascii digits", "t=\u0661\u0662\u0663,v1=00", "malformed_header"),
    ("lone surrogate", f"t={NOW}\ud800,v1={VALID_SIG}", "malformed_header"),
    ("invalid utf-8 bytes", b"t=1700000000,v1=\xff\xfe", "malformed_header"),
    ("latin-1 bytes", f"t={NOW},v1=caf\u00e9".encode("latin-1"), "malformed_header"),
    ("duplicate t", f"t={NOW},t={NOW},v1={VALID_SIG}", "malformed_header"),
    ("non-numeric t", f"t=now,v1={VALID_SIG}", "malformed_header"),
    ("huge t", f"t=99999999999999999999999999,v1={VALID_SIG}", "malformed_header"),
    ("5000-digit t", "t=" + "9" * 5000 + ",v1=00", "malformed_header"),
    ("negative t", f"t=-{NOW},v1={VALID_SIG}", "malformed_header"),
    ("plus-signed t", f"t=+{NOW},v1={VALID_SIG}", "malformed_header"),
    ("leading-zero t", f"t=0{NOW},v1={VALID_SIG}", "malformed_header"),
    ("fractional t", f"t={NOW}.5,v1={VALID_SIG}", "malformed_header"),
    ("exponent t", f"t=1.7e9,v1={VALID_SIG}", "malformed_header"),
    ("hex t", f"t=0x10,v1={VALID_SIG}", "malformed_header"),
    ("empty t", f"t=,v1={VALID_SIG}", "malformed_header"),
    ("missing t", f"v1={VALID_SIG}", "malformed_header"),
    ("upper-case keys", f"T={NOW},V1={VALID_SIG}", "malformed_header"),
    ("only commas", ",,,", "malformed_header"),
    ("only whitespace", "   ", "malformed_header"),
    ("space after comma", f"t={NOW}, v1={VALID_SIG}", "malformed_header"),
    ("leading space", f" t={NOW},v1={VALID_SIG}", "malformed_header"),
    ("tab inside", f"t={NOW},\tv1={VALID_SIG}", "malformed_header"),
    ("trailing newline", f"t={NOW},v1={VALID_SIG}\n", "malformed_header"),
    ("trailing comma", f"t={NOW},v1={VALID_SIG},", "malformed_header"),
    ("empty item", f"t={NOW},,v1={VALID_SIG}", "malformed_header"),
    ("item without =", f"t={NOW},v1", "malformed_header"),
    ("empty key", f"t={NOW},={VALID_SIG}", "malformed_header"),
    ("empty v1", f"t={NOW},v1=", "malformed_header"),
    ("NUL byte", f"t={NOW}\x00,v1={VALID_SIG}", "malformed_header"),
    ("NUL bytes as bytes", b"t=1700000000,v1=\x00\x00", "malformed_header"),
    ("100k-char header", f"t={NOW},v1=" + "a" * 100_000, "malformed_header"),
    ("3000 items", f"t={NOW}," + ",".join(["v1=00"] * 3000), "malformed_header"),
    ("not text", 1700000000, "malformed_header"),
    ("t only", f"t={NOW}", "no_signature"),
    ("other schemes only", f"t={NOW},v0={VALID_SIG},v2={VALID_SIG}", "no_signature"),
    ("1600 short v1 items", f"t={NOW}," + ",".join(["v1=0"] * 1600), "signature_mismatch"),
    ("non-hex v1", f"t={NOW},v1={'z' * 64}", "signature_mismatch"),
    ("odd-length hex v1", f"t={NOW},v1=abc", "signature_mismatch"),
    ("upper-case hex v1", f"t={NOW},v1={VALID_SIG.upper()}", "signature_mismatch"),
    ("truncated v1", f"t={NOW},v1={VALID_SIG[:-1]}", "signature_mismatch"),
    ("v1 with '=' padding", f"t={NOW},v1={VALID_SIG}==", "signature_mismatch"),
    ("signature of another t", f"t={NOW + 1},v1={VALID_SIG}", "signature_mismatch"),
]


@pytest.mark.parametrize(
    ("header", "reason"), [case[1:] for case in HOSTILE_HEADERS], ids=[case[0] for case in HOSTILE_HEADERS]
)
def test_hostile_header_raises_signature_error(header: object, reason: str) -> None:
    assert reason_of(b"payload", header, now=NOW) == reason


def test_the_untampered_hostile_baseline_verifies() -> None:
    # Guards the table above: its signatures fail because of the tampering, not because VALID_SIG is wrong.
    assert verify_header(b"payload", f"t={NOW},v1={VALID_SIG}", SECRET, now=NOW) == NOW


_ITEM_KEYS = st.sampled_from(["t", "v1", "v0", "T", "", " t", "v1 ", "t\x00", "\u00e9"])
_ITEM_VALUES = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=12),
    st.text("0123456789abcdef", max_size=70),
)
_HEADER_LIKE = st.lists(st.tuples(_ITEM_KEYS, st.sampled_from(["=", "", "=="]), _ITEM_VALUES), max_size=8).map(
    lambda items: ",".join(key + sep + value for key, sep, value in items)
)


@given(header=st.one_of(st.text(), st.binary(), _HEADER_LIKE, _HEADER_LIKE.map(str.encode)))
def test_arbitrary_headers_raise_only_signature_error(header: str | bytes) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_header(b"payload", header, SECRET, now=NOW)
    assert caught.value.reason in REASONS


@given(payload=st.binary(), tolerance=st.one_of(st.none(), st.integers(0, 10**6)))
def test_arbitrary_payloads_round_trip(payload: bytes, tolerance: int | None) -> None:
    header = sign_header(payload, SECRET, timestamp=NOW)
    assert verify_header(payload, header, SECRET, tolerance=tolerance, now=NOW) == NOW


# --- The package on its own ---------------------------------------------------------------------------


def test_package_imports_only_its_own_modules() -> None:
    code = (
        "import sys, reelay_signing\n"
        "roots = {'litestar', 'storage', 'service', 'reelay_signing'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.strip().split(","))
    assert loaded == {
        "reelay_signing",
        "reelay_signing.asgi",
        "reelay_signing.errors",
        "reelay_signing.material",
        "reelay_signing.standard",
        "reelay_signing.timestamped",
    }


def test_public_surface() -> None:
    import reelay_signing

    assert sorted(reelay_signing.__all__) == [
        "Reason",
        "SignatureError",
        "SignatureVerificationMiddleware",
        "StandardWebhooksScheme",
        "TimestampedScheme",
        "Verifier",
        "compute_signature",
        "sign_header",
        "sign_headers",
        "verify_header",
        "verify_headers",
    ]
