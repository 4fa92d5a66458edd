"""Identifiers and API-key secrets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ulid import ULID

from service.errors import InvalidRequest

KEY_PREFIX = "rlk_"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105  # the Standard Webhooks prefix, not a secret


def new_job_id() -> str:
    return f"job_{ULID()}"


def new_endpoint_id() -> str:
    return f"we_{ULID()}"


def new_webhook_secret() -> str:
    """A webhook signing secret in the Standard Webhooks form: `whsec_` + base64 of 24 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def encode_cursor(last_id: str) -> str:
    """An opaque page cursor: the last id of a page, which the next page starts strictly before."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, prefix: str) -> str:
    """The id in a cursor `encode_cursor` made for ids of `prefix` + 26 characters; InvalidRequest otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor: not a cursor this API returned", details={"field": "cursor"}) from None
    if not raw.startswith(prefix) or len(raw) != len(prefix) + 26:
        raise InvalidRequest("cursor: not a cursor this API returned", details={"field": "cursor"})
    return raw


def new_token() -> str:
    """An unguessable URL-safe token (256 bits)."""
    return secrets.token_urlsafe(32)


def new_api_key() -> tuple[str, str, bytes]:
    """A fresh API key as (key id, the full key shown once, the hash that is stored)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> bytes:
    # Keys carry 256 bits of entropy, so a plain SHA-256 is enough; no password stretching needed.
    return hashlib.sha256(secret.encode()).digest()


def split_api_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key.removeprefix(KEY_PREFIX).partition("_")
    if not sep or len(key_id) != 16 or not secret:
        return None
    return key_id, secret


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
