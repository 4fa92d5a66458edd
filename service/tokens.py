"""Stream tokens: stateless, read-only grants to one key's event streams that a backend hands to a browser.

`rst_` + base64url(JSON claims) + "." + base64url(HMAC-SHA256 of everything before the dot), under the server
secret "stream_tokens" that every replica shares.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import TYPE_CHECKING

import msgspec

from service.errors import InvalidRequest, Unauthorized
from service.timestamps import to_iso

if TYPE_CHECKING:
    from collections.abc import Callable

PREFIX = "rst_"
MAX_TTL_SECONDS = 3600
# The longest token signed or taken: it travels in a URL, so a filter that would make it longer is a 400 at issue,
# and any longer value is refused before decoding (and, percent-encoded, still fits the server's header limit).
MAX_TOKEN_CHARS = 2048


class StreamClaims(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a token grants: the events of key `k`, until `exp` (unix seconds), narrowed to a job and/or to jobs
    whose metadata holds every pair of `md`."""

    k: str
    exp: int
    job: str | None = None
    md: dict[str, str] | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StreamClaims).decode


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Signs and checks stream tokens; `clock` is the wall clock (unix seconds) that expiry is read against."""

    def __init__(self, secret: str, clock: Callable[[], float]) -> None:
        self._secret = secret.encode()
        self._clock = clock

    def issue(
        self, api_key_id: str, ttl_seconds: int, *, job_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> tuple[str, int]:
        """A token and its expiry (unix seconds)."""
        expires = int(self._clock()) + ttl_seconds
        claims = StreamClaims(k=api_key_id, exp=expires, job=job_id, md=metadata or None)
        body = PREFIX + _b64(_encode(claims))
        token = f"{body}.{_b64(self._sign(body))}"
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidRequest(
                f"metadata: the filter makes the token {len(token)} characters long, more than the "
                f"{MAX_TOKEN_CHARS} a URL carries; filter on fewer or shorter pairs",
                details={"field": "metadata", "max_token_chars": MAX_TOKEN_CHARS},
            )
        return token, expires

    def verify(self, token: str) -> StreamClaims:
        """The claims of a token this server signed that has not expired; else Unauthorized (`invalid_token`,
        `token_expired`)."""
        body, dot, signature = token.rpartition(".")
        invalid = Unauthorized("the stream token is not valid", code="invalid_token")
        if not dot or not body.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise invalid
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise invalid from None
        if not hmac.compare_digest(given, self._sign(body)):
            raise invalid
        try:
            claims = _decode(_unb64(body.removeprefix(PREFIX)))
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise invalid from None  # signed by us, so never in practice; still never a 500
        if claims.exp <= self._clock():
            raise Unauthorized(
                "the stream token has expired; ask your backend for a new one",
                code="token_expired",
                details={"expired_at": to_iso(claims.exp, "seconds")},
            )
        return claims

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
