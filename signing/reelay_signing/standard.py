"""The Standard Webhooks scheme (``webhook-id``, ``-timestamp``, ``-signature``): signing, strict parsing, raw bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from secrets import token_urlsafe
from typing import Final, TypeAlias

from reelay_signing.errors import SignatureError
from reelay_signing.material import any_matches, check_timestamp, payload_bytes, secret_keys, text_key

__all__ = (
    "DEFAULT_TOLERANCE",
    "ID_HEADER",
    "MAX_HEADER_LENGTH",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "StandardWebhooksScheme",
    "sign",
    "sign_headers",
    "verify_headers",
)

Secret: TypeAlias = str | bytes
Secrets: TypeAlias = Secret | Sequence[Secret]
Payload: TypeAlias = bytes | str

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
# The Standard Webhooks convention: "whsec_" + base64 of the key bytes. Any other text is the key itself.
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a format marker, not a secret
VERSION: Final = "v1"
DEFAULT_TOLERANCE: Final = 300
# Per header: far above any honest value (an id, a timestamp, a few signatures), low enough to bound the parsing work.
MAX_HEADER_LENGTH: Final = 8192
# Twelve digits reach the year 33658; a longer "timestamp" is not a unix time.
_MAX_TIMESTAMP: Final = 10**12
# Canonical decimal only, so the signed text "{id}.{timestamp}." has exactly one spelling.
_TIMESTAMP: Final = re.compile(r"0|[1-9][0-9]{0,11}")
# Visible ASCII without "." (the spec: an id must not hold the separator of the signed content).
_MSG_ID: Final = re.compile(r"[\x21-\x2d\x2f-\x7e]+")
# One "<version>,<signature>" entry of the space-separated list; the signature holds no comma.
_ENTRY: Final = re.compile(r"([A-Za-z0-9_-]+),([\x21-\x2b\x2d-\x7e]+)")


def sign(payload: bytes | str, secret: str | bytes, *, msg_id: str, timestamp: int) -> str:
    """Return ``v1,<base64 HMAC-SHA256(key, f"{msg_id}.{timestamp}." + payload)>``."""
    return _signature(_key(secret), _signed_prefix(msg_id, timestamp), payload_bytes(payload))


def sign_headers(payload: bytes | str, secret: Secrets, *, msg_id: str, timestamp: int) -> dict[str, str]:
    """Return the three Standard Webhooks headers for ``payload``: one ``v1,`` signature per secret (several
    during a rotation, so a receiver holding either secret verifies)."""
    return _headers(secret_keys(secret, _key), msg_id, timestamp, payload_bytes(payload))


def verify_headers(
    payload: bytes | str,
    headers: Mapping[str, str],
    secrets: str | bytes | Sequence[str | bytes],
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check the ``webhook-*`` headers against the raw ``payload`` and return the verified webhook id.

    Header names are matched case-insensitively. Any ``v1`` signature of the space-separated list
    may match, made with any of ``secrets``; other versions (``v1a``, ``v2``...) are skipped. The
    timestamp must lie within ``tolerance`` seconds of ``now`` (default: ``time.time()``), in the
    past or in the future; ``tolerance=None`` skips that check.

    Raises:
        SignatureError: for every way the headers, payload or secrets can be wrong.
        ValueError: if ``tolerance`` is negative or ``now`` or ``tolerance`` is not finite.
    """
    keys = secret_keys(secrets, _key)
    body = payload_bytes(payload)
    msg_id, timestamp, signatures = _parse(headers)
    prefix = f"{msg_id}.{timestamp}.".encode("ascii")
    if not any_matches((_signature(key, prefix, body) for key in keys), signatures):
        raise SignatureError("signature_mismatch")
    if tolerance is not None:
        # The default time, for a caller using this function alone: the schemes and the service pass `now`.
        check_timestamp(timestamp, tolerance, time.time() if now is None else now)
    return msg_id


class StandardWebhooksScheme:
    """Standard Webhooks with its secrets, tolerance and clock; ``verify`` plugs into the signature middlewares."""

    __slots__ = ("_clock", "_keys", "_tolerance")

    def __init__(
        self,
        secrets: str | bytes | Sequence[str | bytes],
        *,
        tolerance: float | None = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the configuration now, so a bad secret fails at startup rather than on the first webhook.

        Args:
            secrets: the current secret first; older ones still accepted during a rotation.
            tolerance: how far, in seconds, the timestamp may be from ``clock()``; ``None`` disables it.
            clock: returns the current unix time.
        """
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError("tolerance must be None or a finite number >= 0")
        self._keys: tuple[bytes, ...] = tuple(secret_keys(secrets, _key))
        self._tolerance = tolerance
        self._clock = clock

    def sign(self, payload: bytes | str, *, msg_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        """Return the headers for ``payload``, one signature per secret; a fresh id and ``clock()`` by default."""
        when = int(self._clock()) if timestamp is None else timestamp
        ident = f"msg_{token_urlsafe(18)}" if msg_id is None else msg_id
        return _headers(self._keys, ident, when, payload_bytes(payload))

    def verify(self, headers: Mapping[str, str], payload: bytes | str) -> str:
        """Verify ``payload`` against the ``webhook-*`` headers; return the verified webhook id."""
        return verify_headers(
            payload,
            headers,
            self._keys,
            tolerance=self._tolerance,
            now=None if self._tolerance is None else self._clock(),
        )


def _headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    prefix = _signed_prefix(msg_id, timestamp)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(_signature(key, prefix, body) for key in keys),
    }


def _parse(headers: object) -> tuple[str, int, list[str]]:
    """Return the id, the timestamp and the ``v1`` signatures (as ``v1,<base64>`` text) of ``headers``."""
    if not isinstance(headers, Mapping):
        raise SignatureError("malformed_header", "The headers must be a mapping of names to values.")
    msg_id = _header(headers, ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if _MSG_ID.fullmatch(msg_id) is None:
        raise SignatureError("malformed_header", f"The {ID_HEADER} header must be visible ASCII without '.'.")
    if _TIMESTAMP.fullmatch(timestamp) is None:
        raise SignatureError("malformed_header", f"The {TIMESTAMP_HEADER} header must be a unix time in seconds.")
    signatures: list[str] = []
    for entry in signature.split(" "):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise SignatureError(
                "malformed_header", f"The {SIGNATURE_HEADER} header must be space-separated <version>,<signature>."
            )
        if match[1] == VERSION:
            signatures.append(entry)
    if not signatures:
        raise SignatureError("no_signature", f"The {SIGNATURE_HEADER} header has no {VERSION} signature.")
    return msg_id, int(timestamp), signatures


def _header(headers: Mapping[object, object], name: str) -> str:
    values = [value for key, value in headers.items() if isinstance(key, str) and key.isascii() and key.lower() == name]
    if len(values) > 1:
        raise SignatureError("malformed_header", f"The {name} header is present more than once.")
    value = values[0] if values else None
    if value is None:
        raise SignatureError("missing_header", f"The {name} header is missing.")
    if not isinstance(value, str | bytes | bytearray):
        raise SignatureError("malformed_header", f"The {name} header must be text.")
    if len(value) > MAX_HEADER_LENGTH:
        raise SignatureError("malformed_header", f"The {name} header is longer than {MAX_HEADER_LENGTH}.")
    if not isinstance(value, str):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("malformed_header", f"The {name} header is not ASCII.") from None
    if not value:
        raise SignatureError("missing_header", f"The {name} header is empty.")
    if not value.isascii():
        raise SignatureError("malformed_header", f"The {name} header is not ASCII.")
    return value


def _signature(key: bytes, prefix: bytes, body: bytes) -> str:
    mac = hmac.new(key, prefix, hashlib.sha256)
    mac.update(body)
    return f"{VERSION},{base64.b64encode(mac.digest()).decode('ascii')}"


def _signed_prefix(msg_id: str, timestamp: int) -> bytes:
    if not isinstance(msg_id, str) or len(msg_id) > MAX_HEADER_LENGTH or _MSG_ID.fullmatch(msg_id) is None:
        raise ValueError("msg_id must be non-empty visible ASCII without '.'")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < _MAX_TIMESTAMP:
        raise ValueError("timestamp must be a unix time in whole seconds, 0 <= timestamp < 10**12")
    return f"{msg_id}.{timestamp}.".encode("ascii")


def _key(secret: object) -> bytes:
    if isinstance(secret, str) and secret.startswith(SECRET_PREFIX):
        return _decode_prefixed(secret.removeprefix(SECRET_PREFIX))
    return text_key(secret)


def _decode_prefixed(encoded: str) -> bytes:
    # Missing padding is tolerated, as by the reference library; anything else not base64 is refused.
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("invalid_secret", f"A {SECRET_PREFIX} secret must be base64 of the key.") from None
    if not key:
        raise SignatureError("invalid_secret", f"The {SECRET_PREFIX} secret holds no key bytes.")
    return key
