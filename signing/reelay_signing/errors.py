"""The one exception every signature check raises, with a stable reason code per failure."""

from __future__ import annotations

from typing import Final, Literal, get_args

__all__ = ("REASONS", "Reason", "SignatureError")

Reason = Literal[
    "missing_header",
    "malformed_header",
    "no_signature",
    "signature_mismatch",
    "timestamp_too_old",
    "timestamp_in_future",
    "body_too_large",
    "invalid_secret",
    "invalid_payload",
    "invalid_token",
    "signing_not_configured",
]

REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

_MESSAGES: Final[dict[Reason, str]] = {
    "missing_header": "The signature header is missing or empty.",
    "malformed_header": "The signature header could not be parsed.",
    "no_signature": "The signature header holds no signature with a supported scheme.",
    "signature_mismatch": "No signature in the header matches the payload.",
    "timestamp_too_old": "The signature timestamp is older than the tolerance allows.",
    "timestamp_in_future": "The signature timestamp is further in the future than the tolerance allows.",
    "body_too_large": "The request body is larger than the verifier accepts.",
    "invalid_secret": "The signing secret is empty, not text or bytes, or contains whitespace.",
    "invalid_payload": "The payload must be bytes or str.",
    "invalid_token": "The callback URL's token does not match.",
    "signing_not_configured": "No secret is configured to verify this signature.",
}


class SignatureError(Exception):
    """A payload or its signature header failed verification; ``reason`` says why."""

    reason: Reason
    message: str

    def __init__(self, reason: Reason, message: str | None = None) -> None:
        self.reason = reason
        self.message = message or _MESSAGES[reason]
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"SignatureError(reason={self.reason!r}, message={self.message!r})"
