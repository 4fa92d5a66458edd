"""Sign and verify webhook signatures, on the standard library alone (only reelay_signing.litestar needs Litestar)."""

from __future__ import annotations

from reelay_signing.asgi import SignatureVerificationMiddleware, Verifier
from reelay_signing.errors import Reason, SignatureError
from reelay_signing.standard import StandardWebhooksScheme, sign_headers, verify_headers
from reelay_signing.timestamped import TimestampedScheme, compute_signature, sign_header, verify_header

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
