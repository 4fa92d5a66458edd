"""Webhook signature signing and verification, importable on its own: the core needs only the standard library."""

from __future__ import annotations

from service.signing.asgi import SignatureVerificationMiddleware, Verifier
from service.signing.errors import Reason, SignatureError
from service.signing.standard import StandardWebhooksScheme, sign_headers, verify_headers
from service.signing.timestamped import TimestampedScheme, compute_signature, sign_header, verify_header

__all__ = (
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
)
