"""What both schemes share: the payload as bytes, secrets as keys, the constant-time match and the
timestamp tolerance; every refusal is a SignatureError."""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable, Sequence

from reelay_signing.errors import SignatureError


def payload_bytes(payload: object) -> bytes:
    """The exact bytes to sign or verify; text is taken as UTF-8, never re-serialized."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError:
            raise SignatureError("invalid_payload", "The payload text cannot be encoded as UTF-8.") from None
    raise SignatureError("invalid_payload")


def text_key(secret: object) -> bytes:
    """A secret given as bytes, or as text used as its UTF-8 bytes."""
    if isinstance(secret, bytes | bytearray):
        if not secret:
            raise SignatureError("invalid_secret", "The signing secret is empty.")
        return bytes(secret)
    if not isinstance(secret, str) or not secret:
        raise SignatureError("invalid_secret", "The signing secret must be non-empty text or bytes.")
    # A text secret with whitespace is almost always a copy-paste slip (stripe-node refuses it too).
    if any(char.isspace() for char in secret):
        raise SignatureError("invalid_secret", "The signing secret contains whitespace.")
    try:
        return secret.encode("utf-8")
    except UnicodeEncodeError:
        raise SignatureError("invalid_secret", "The signing secret cannot be encoded as UTF-8.") from None


def secret_keys(secrets: object, key: Callable[[object], bytes] = text_key) -> list[bytes]:
    """One secret or several (rotation), each turned into key bytes by `key`."""
    if isinstance(secrets, str | bytes | bytearray):
        return [key(secrets)]
    if not isinstance(secrets, Sequence) or not secrets:
        raise SignatureError("invalid_secret", "At least one signing secret is required.")
    return [key(secret) for secret in secrets]


def any_matches(expected: Iterable[str], signatures: Sequence[str]) -> bool:
    """Whether any expected signature equals any given one, compared without an early exit, so the time
    taken does not say which signature or secret matched."""
    matched = False
    for candidate in expected:
        for signature in signatures:
            matched |= hmac.compare_digest(candidate, signature)
    return matched


def check_timestamp(timestamp: int, tolerance: float, now: float) -> None:
    """Refuse a timestamp more than `tolerance` seconds before or after `now`; the caller supplies the time."""
    if not (math.isfinite(tolerance) and tolerance >= 0 and math.isfinite(now)):
        raise ValueError("tolerance must be a finite number >= 0 and now a finite unix time")
    if timestamp < now - tolerance:
        raise SignatureError("timestamp_too_old")
    if timestamp > now + tolerance:
        raise SignatureError("timestamp_in_future")
