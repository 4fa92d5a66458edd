"""The ``t=<unix>,v1=<hex>`` webhook signature scheme (Stripe's): signing, strict parsing, verification of raw bytes."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeAlias

from reelay_signing.errors import SignatureError
from reelay_signing.material import any_matches, check_timestamp, payload_bytes, secret_keys, text_key

__all__ = (
    "DEFAULT_TOLERANCE",
    "MAX_HEADER_LENGTH",
    "TimestampedScheme",
    "compute_signature",
    "sign_header",
    "verify_header",
)

Secret: TypeAlias = str | bytes
Secrets: TypeAlias = Secret | Sequence[Secret]
Payload: TypeAlias = bytes | bytearray | str
Header: TypeAlias = str | bytes | bytearray | None

SCHEME: Final = "v1"
DEFAULT_TOLERANCE: Final = 300
# Far above any honest header (a timestamp and a few signatures), low enough to bound the parsing work.
MAX_HEADER_LENGTH: Final = 8192
# Twelve digits reach the year 33658; a longer "timestamp" is not a unix time.
_MAX_TIMESTAMP: Final = 10**12
_ITEM: Final = re.compile(r"([A-Za-z0-9_-]+)=([\x21-\x2b\x2d-\x7e]+)")
# Canonical decimal only, so the signed text "{t}." has exactly one spelling.
_TIMESTAMP: Final = re.compile(r"0|[1-9][0-9]{0,11}")


def compute_signature(payload: Payload, secret: Secret, timestamp: int) -> str:
    """Return ``hex(HMAC_SHA256(secret, f"{timestamp}." + payload))``."""
    return _hexdigest(text_key(secret), _timestamp_text(timestamp), payload_bytes(payload))


def sign_header(payload: Payload, secret: Secrets, *, timestamp: int) -> str:
    """Return ``t=<timestamp>,v1=<hex>``, with one ``v1`` per secret when several are given (rotation)."""
    text = _timestamp_text(timestamp)
    body = payload_bytes(payload)
    signatures = ",".join(f"{SCHEME}={_hexdigest(key, text, body)}" for key in secret_keys(secret))
    return f"t={text.decode('ascii')},{signatures}"


def verify_header(
    payload: Payload,
    header: Header,
    secrets: Secrets,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check ``header`` against the raw ``payload`` and return the signed timestamp.

    Any ``v1`` signature in the header may match, made with any of ``secrets``. The
    timestamp must lie within ``tolerance`` seconds of ``now`` (default: ``time.time()``),
    in the past or in the future; ``tolerance=None`` skips that check.

    Raises:
        SignatureError: for every way the header, payload or secrets can be wrong.
        ValueError: if ``tolerance`` is negative or ``now`` or ``tolerance`` is not finite.
    """
    keys = secret_keys(secrets)
    body = payload_bytes(payload)
    timestamp, text, signatures = _parse(header)
    if not any_matches((_hexdigest(key, text, body) for key in keys), signatures):
        raise SignatureError("signature_mismatch")
    if tolerance is not None:
        # The default time, for a caller using this function alone: the schemes and the service pass `now`.
        check_timestamp(timestamp, tolerance, time.time() if now is None else now)
    return timestamp


class TimestampedScheme:
    """One signature header in the ``t=<unix>,v1=<hex>`` scheme, with its secrets, tolerance and clock."""

    __slots__ = ("_clock", "_header_name", "_keys", "_tolerance")

    def __init__(
        self,
        secrets: Secrets,
        *,
        header_name: str,
        tolerance: float | None = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the configuration now, so a bad secret fails at startup rather than on the first webhook.

        Args:
            secrets: the current secret first; older ones still accepted during a rotation.
            header_name: the header carrying the signature, matched case-insensitively.
            tolerance: how far, in seconds, the timestamp may be from ``clock()``; ``None`` disables it.
            clock: returns the current unix time.
        """
        if not header_name or not header_name.isascii() or not header_name.isprintable():
            raise ValueError("header_name must be a non-empty printable ASCII header name")
        if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError("tolerance must be None or a finite number >= 0")
        self._keys: tuple[bytes, ...] = tuple(secret_keys(secrets))
        self._header_name = header_name
        self._tolerance = tolerance
        self._clock = clock

    @property
    def header_name(self) -> str:
        """The header this scheme reads and writes."""
        return self._header_name

    def sign(self, payload: Payload, *, timestamp: int | None = None) -> dict[str, str]:
        """Return the headers to send with ``payload``, signed with every secret at ``timestamp`` (default: now)."""
        when = int(self._clock()) if timestamp is None else timestamp
        return {self._header_name: sign_header(payload, self._keys, timestamp=when)}

    def verify(self, headers: Mapping[str, str], payload: Payload) -> int:
        """Verify ``payload`` against its signature header in ``headers``; return the signed timestamp."""
        return verify_header(
            payload,
            _find_header(headers, self._header_name),
            self._keys,
            tolerance=self._tolerance,
            now=None if self._tolerance is None else self._clock(),
        )


def _find_header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    values = [value for key, value in headers.items() if isinstance(key, str) and key.lower() == wanted]
    if len(values) > 1:
        raise SignatureError("malformed_header", f"The {name} header is present more than once.")
    return values[0] if values else None


def _parse(header: object) -> tuple[int, bytes, list[str]]:
    """Split a header into its timestamp (as a number and as signed text) and its ``v1`` signatures."""
    if header is None:
        raise SignatureError("missing_header")
    if not isinstance(header, str | bytes | bytearray):
        raise SignatureError("malformed_header", "The signature header must be text or bytes.")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("malformed_header", f"The signature header is longer than {MAX_HEADER_LENGTH}.")
    if not isinstance(header, str):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("malformed_header", "The signature header is not ASCII.") from None
    if not header:
        raise SignatureError("missing_header")
    if not header.isascii():
        raise SignatureError("malformed_header", "The signature header is not ASCII.")
    timestamp: str | None = None
    signatures: list[str] = []
    for item in header.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise SignatureError("malformed_header", "Each item of the signature header must be key=value.")
        key, value = match.groups()
        if key == "t":
            if timestamp is not None:
                raise SignatureError("malformed_header", "The signature header has more than one timestamp.")
            timestamp = value
        elif key == SCHEME:
            signatures.append(value)
    if timestamp is None or _TIMESTAMP.fullmatch(timestamp) is None:
        raise SignatureError("malformed_header", "The signature header has no valid t=<unix time>.")
    if not signatures:
        raise SignatureError("no_signature", f"The signature header has no {SCHEME} signature.")
    return int(timestamp), timestamp.encode("ascii"), signatures


def _hexdigest(key: bytes, timestamp: bytes, body: bytes) -> str:
    mac = hmac.new(key, timestamp, hashlib.sha256)
    mac.update(b".")
    mac.update(body)
    return mac.hexdigest()


def _timestamp_text(timestamp: int) -> bytes:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < _MAX_TIMESTAMP:
        raise ValueError("timestamp must be a unix time in whole seconds, 0 <= timestamp < 10**12")
    return str(timestamp).encode("ascii")
