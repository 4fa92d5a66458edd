"""Every exception the service defines, in one tree; `service/api/errors.py` maps them to the error shape.

ServiceError
 ├── ReelayError                    an answer to the caller: {"error": {"code", "message", "details"}}
 │    ├── InvalidRequest        400 invalid_request / invalid_last_event_id
 │    │    └── WebhookRejected  400 invalid_request: a verified webhook whose body cannot be read
 │    ├── Unauthorized          401 unauthorized
 │    ├── PaymentRequired       402 budget_exhausted: the key's budget cannot take the job's estimate
 │    ├── Forbidden             403 invalid_signature / url_expired (a signed asset URL that does not hold),
 │    │                         csrf_failed (a dashboard session's unsafe request without its CSRF value)
 │    ├── NotFound              404 not_found
 │    ├── RequestTimeout        408 request_timeout
 │    ├── Conflict              409 conflict / idempotency_conflict / job_finished
 │    ├── Gone                  410 asset_expired: the asset was deleted by REELAY_ASSET_RETENTION_DAYS
 │    ├── UnsupportedMediaType  415 unsupported_media_type
 │    ├── RangeNotSatisfiable   416 range_not_satisfiable, with Content-Range: bytes */<size>
 │    ├── RateLimited           429 rate_limited / too_many_streams, with Retry-After
 │    ├── HeadersTooLarge       431 headers_too_large (written by the server's HTTP protocol, before the app runs)
 │    ├── ClientClosedRequest   499 client_closed_request (never sent: the client has gone; metrics and the log show it)
 │    └── ServiceUnavailable    503 unavailable
 │         └── NotReady         503 unavailable / schema_outdated / disk_full (GET /readyz)
 ├── ProviderError                  talking to a provider: the loops make it a retry or a job error, never an answer
 │    ├── TransientError            retry later (connection refused, 429, 5xx); `maybe_sent` if it may exist upstream
 │    ├── PermanentError            the provider refused the request; the job fails with its code and message
 │    └── OutcomeUnknown            the create was sent and the answer was lost; never resend blindly
 ├── InputRefused                   input a provider cannot take: capabilities.check_for makes it an InvalidRequest
 ├── ConfigError                    a bad REELAY_* setting (also a ValueError): the CLI prints it and exits
 └── StartupError                   a server stopped during start-up: the CLI prints it and exits

Defined where the service cannot be imported, and mapped here too:
 StorageError (storage/errors.py)
  ├── StorageUnavailable             503 unavailable (by the handler; NotReady on GET /readyz)
  ├── QueryRejected                  400 invalid_request (by the handler)
  ├── SchemaOutdated                 NotReady schema_outdated (service/health.py)
  ├── IdempotencyConflict            Conflict idempotency_conflict (Gateway.create_job)
  ├── TaskTaken                      a webhook answered 200 "ignored" (Gateway)
  ├── OverBudget                     PaymentRequired budget_exhausted (Gateway.create_job)
  ├── JobNotFound                    a webhook for a job gone meanwhile (pruned) is "ignored" (Gateway)
  └── any other                      500 internal_error (by the handler)
 SignatureError (reelay_signing)     401 invalid_signature, its `reason` in details (by the handler)
 TargetRefused (service/egress.py)   an httpx.ConnectError: the egress guard refused a non-public target
 Litestar's ValidationException      400 invalid_request; its HTTPException keeps its status (405, 413, ...)
 anything else                       500 internal_error, logged with its traceback
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ServiceError(Exception):
    """Base class of every exception the service defines."""


class ReelayError(ServiceError):
    """An answer to the caller: its status, a stable `code`, a message for humans and structured `details`."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        if code is not None:
            self.code = code


class InvalidRequest(ReelayError):
    status_code = 400
    code = "invalid_request"


class WebhookRejected(InvalidRequest):
    """A webhook that is authentic-looking but cannot be used (its body cannot be read)."""


class Unauthorized(ReelayError):
    status_code = 401
    code = "unauthorized"


class PaymentRequired(ReelayError):
    status_code = 402
    code = "budget_exhausted"


class Forbidden(ReelayError):
    status_code = 403
    code = "forbidden"


class NotFound(ReelayError):
    status_code = 404
    code = "not_found"


class RequestTimeout(ReelayError):
    status_code = 408
    code = "request_timeout"


class Conflict(ReelayError):
    status_code = 409
    code = "conflict"


class Gone(ReelayError):
    status_code = 410
    code = "gone"


class RangeNotSatisfiable(ReelayError):
    """A Range no byte of the object falls in; the answer names the object's `size` in Content-Range."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message, details={"size": size})
        self.size = size


class UnsupportedMediaType(ReelayError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimited(ReelayError):
    """Too many requests or streams for an API key; the caller may retry after `retry_after` seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        details: Mapping[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, details=details, code=code)
        self.retry_after = retry_after


class HeadersTooLarge(ReelayError):
    status_code = 431
    code = "headers_too_large"


class ClientClosedRequest(ReelayError):
    """The client closed its connection before sending the whole request: its event, not a server error."""

    status_code = 499
    code = "client_closed_request"


class ServiceUnavailable(ReelayError):
    status_code = 503
    code = "unavailable"


class NotReady(ServiceUnavailable):
    """The database cannot take jobs; the code and message say what an operator should do."""


class ProviderError(ServiceError):
    """Base class of failures talking to a provider."""


class TransientError(ProviderError):
    """Worth retrying, not before `retry_after` seconds or the unix time `retry_at` when the provider said so.
    `give_up_after`: after that many create attempts in all, the same answer is taken as a refusal (a provider
    whose server error may hide one)."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        retry_at: float | None = None,
        maybe_sent: bool = False,
        give_up_after: int | None = None,
        provider_code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # the provider's HTTP status, where it answered (a 429 pauses its rate budget)
        self.retry_after = retry_after
        self.retry_at = retry_at
        self.maybe_sent = maybe_sent
        self.give_up_after = give_up_after
        self.provider_code = provider_code

    def retry_delay(self, now: float) -> float | None:
        """The provider's least wait from `now`, in seconds; None when it named none (the schedule decides)."""
        if self.retry_at is None:
            return self.retry_after
        return max(self.retry_after or 0.0, self.retry_at - now, 0.0)


class PermanentError(ProviderError):
    def __init__(self, message: str, *, provider_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider_code = provider_code
        self.status = status


class OutcomeUnknown(ProviderError):
    """The request reached the network but its answer never came back."""


class InputRefused(ServiceError):
    """Input a provider cannot take, found before anything is sent (the caller gets a 400)."""

    def __init__(self, field: str, message: str, allowed: Any = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.allowed = allowed


class ConfigError(ServiceError, ValueError):
    """A REELAY_* variable has a value that cannot be used."""


class StartupError(ServiceError):
    """A server stopped before it started (its app's start-up failed); the log says why."""
