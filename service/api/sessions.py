"""Dashboard sessions: a signed cookie that stands for an API key on /v1 routes, and the CSRF value that unsafe
requests authenticated by it must echo in `X-CSRF-Token`.

The cookie holds the key id and an expiry, never the key: revoking the key ends every session of it (within the
key cache window), and nothing is stored per session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "reelay_session"
CSRF_HEADER = "x-csrf-token"
SECRET_NAME = "dashboard_sessions"  # noqa: S105  # the name of the server secret (Store.server_secret) every replica signs with


@dataclass(frozen=True)
class Session:
    key_id: str
    expires_at: float
    csrf_token: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and reads session cookies; `clock` is the wall clock (expiries are absolute)."""

    def __init__(self, secret: str, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._secret = secret.encode()
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def _mac(self, purpose: bytes, payload: str) -> str:
        return _b64(hmac.new(self._secret, purpose + b"." + payload.encode(), hashlib.sha256).digest())

    def issue(self, key_id: str) -> tuple[str, Session]:
        """A new session for the key: the cookie value and what it stands for."""
        expires_at = int(self._clock() + self.ttl_seconds)
        # The nonce makes each sign-in's CSRF value its own.
        body = json.dumps({"k": key_id, "exp": expires_at, "n": secrets.token_urlsafe(12)}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{self._mac(b'session', payload)}", Session(key_id, expires_at, self._mac(b"csrf", payload))

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for; None if it is absent, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        # As bytes: compare_digest raises on a str outside ASCII, and a cookie holds whatever the client sent.
        if not hmac.compare_digest(mac.encode(), self._mac(b"session", payload).encode()):
            return None
        try:
            fields = json.loads(_unb64(payload))
            key_id, expires_at = str(fields["k"]), float(fields["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires_at <= self._clock():
            return None
        return Session(key_id, expires_at, self._mac(b"csrf", payload))


def csrf_matches(session: Session, header: str) -> bool:
    return hmac.compare_digest(session.csrf_token.encode(), header.encode())
