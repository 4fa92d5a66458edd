"""What every provider adapter offers, and the HTTP plumbing they share. The errors they raise (ProviderError and
its subclasses, InputRefused) are defined in service/errors.py and importable from here."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import httpx
import msgspec
import structlog

from reelay_signing.errors import SignatureError
from service.errors import InputRefused as InputRefused
from service.errors import OutcomeUnknown as OutcomeUnknown
from service.errors import PermanentError as PermanentError
from service.errors import ProviderError as ProviderError
from service.errors import TransientError as TransientError
from service.lifecycle import Report
from service.schedule import Backoff
from service.vocabulary import Status
from service.wire import PROMPT_MAX_CHARS

if TYPE_CHECKING:
    from service.settings import ProviderSettings
    from storage import JobRecord

log = structlog.get_logger("reelay.providers")


class Price(msgspec.Struct, frozen=True, kw_only=True):
    unit: str  # "credits" or "usd"
    per_second: dict[str, float] = msgspec.field(default_factory=dict)  # by resolution
    usd_per_credit: float | None = None
    note: str | None = None


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One model id's capabilities; validation and `GET /v1/models` both read this."""

    id: str
    provider: str
    upstream_model: str
    durations: tuple[int, ...]
    default_duration: int
    resolutions: tuple[str, ...]
    default_resolution: str
    aspect_ratios: tuple[str, ...]
    inputs: tuple[str, ...]
    max_reference_images: int = 0
    max_reference_videos: int = 0
    max_reference_audios: int = 0
    audio: bool = False
    seed_range: tuple[int, int] | None = None
    callbacks: bool = False
    price: Price | None = None
    default_aspect_ratio: str | None = None
    # Inputs that must be given; inputs that must be given together; inputs that must not be combined;
    # inputs that need one of some others (e.g. ("reference_audios", ("reference_images", "reference_videos")));
    # and inputs that take public http(s) URLs only, never data URIs.
    required: tuple[str, ...] = ()
    together: tuple[tuple[str, ...], ...] = ()
    exclusive: tuple[tuple[str, str], ...] = ()
    requires: tuple[tuple[str, tuple[str, ...]], ...] = ()
    urls_only: tuple[str, ...] = ()
    # Provider-only keys `provider_options` may pass through as they are, each with its JSON type.
    provider_options: tuple[tuple[str, str], ...] = ()
    # The provider's limit on the prompt, where it is below the API's own.
    max_prompt_chars: int = PROMPT_MAX_CHARS


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    provider_task_id: str
    cost: dict[str, Any] | None = None


class WebhookNotice(msgspec.Struct, frozen=True, kw_only=True):
    """A verified webhook, parsed: which task, what it says, and how to recognise a redelivery."""

    provider_task_id: str
    receipt_key: str
    report: Report
    job_id: str | None = None


class ProviderAdapter(Protocol):
    """One upstream provider: payload mapping, status mapping, results, errors, webhooks, capabilities."""

    name: ClassVar[str]
    # The production API root; REELAY_<NAME>_BASE_URL overrides it.
    default_base_url: ClassVar[str]
    # Settings beyond the base URL, API key and webhook secret that the adapter reads from `settings.options`,
    # each from REELAY_<NAME>_<SETTING> (e.g. Minuit's "moderation").
    extra_settings: ClassVar[tuple[str, ...]]
    models: ClassVar[tuple[ModelSpec, ...]]
    # How a create whose answer was lost is resolved: "idempotency", "lookup" or "fail".
    unknown_outcome: ClassVar[str]
    # Signed webhooks come to /webhooks/<provider>; unsigned ones to a per-job URL with a token. A signing
    # provider whose callbacks carry nothing of Reelay's may ask for the per-job URL too (checked both ways).
    signs_webhooks: ClassVar[bool]
    callback_per_job: ClassVar[bool]
    # Status checks: how often (providers with callbacks wait for the callback grace first) and how many
    # may be in flight at once against this provider.
    poll_schedule: ClassVar[Backoff]
    poll_concurrency: ClassVar[int]

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        """Bind the adapter to its settings and the shared HTTP client."""

    async def submit(self, job: JobRecord, spec: ModelSpec, callback_url: str | None) -> Submission:
        """Create the upstream task."""

    async def find_submission(self, job: JobRecord) -> Submission | None:
        """Look the job's task up at the provider after a lost answer; None if it was never created."""

    async def fetch(self, provider_task_id: str) -> Report:
        """The task's current state."""

    async def cancel(self, provider_task_id: str) -> bool:
        """Cancel upstream; False when the provider has no cancel endpoint."""

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float, job: JobRecord | None) -> None:
        """Raise SignatureError unless the webhook is authentic."""

    def parse_webhook(self, body: bytes) -> WebhookNotice:
        """Read a verified webhook body; raise ValueError when it is not understood."""

    def needs_confirmation(self, notice: WebhookNotice, job: JobRecord) -> bool:
        """True when the webhook must not be applied as is: the status endpoint decides instead."""

    def reserved_options(self, spec: ModelSpec) -> Mapping[str, tuple[str, ...]]:
        """The provider's own keys that Reelay fills in, each with what sets it instead (request fields or a
        setting; none when Reelay alone does): `provider_options` may not name them."""

    def validate(self, spec: ModelSpec, input: Mapping[str, Any]) -> None:
        """Raise InputRefused for input the capabilities data cannot express a rule for."""

    def estimate(self, spec: ModelSpec, input: Mapping[str, Any]) -> dict[str, Any]:
        """The cost estimate for a job, before it is sent."""


def parse_retry_after(value: str | None) -> tuple[float | None, float | None]:
    """A Retry-After header as (seconds to wait, unix time to wait until): a number of seconds gives the first, an
    HTTP date the second, which the loop that retries turns into a wait with its own clock."""
    if not value:
        return None, None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), 3600)), None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None, None
    return None, when.timestamp()


class HttpProvider:
    """Shared HTTP calls, which map transport failures and status codes onto the ProviderError tree, and the
    reading of a task body into a Report, for which each adapter gives its status words and where its fields are."""

    name: ClassVar[str]
    # The provider's status words, spelt as `status_word` returns them, each with the job status it means.
    statuses: ClassVar[Mapping[str, Status]]
    extra_settings: ClassVar[tuple[str, ...]] = ()
    callback_per_job: ClassVar[bool] = False
    poll_schedule: ClassVar[Backoff] = Backoff(initial=2.0, factor=1.5, cap=60.0, jitter=0.2)
    poll_concurrency: ClassVar[int] = 4
    # A floor under the wait after a 429, for providers that ask for one.
    min_retry_after: ClassVar[float] = 0.0
    # Create attempts a server error is retried to, for providers whose 5xx may be a refusal; None: until the
    # job's deadline.
    server_error_attempts: ClassVar[int | None] = None
    # The provider's own spellings of what the adapter sets from the normalized input or from settings.
    reserved: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def reserved_options(self, spec: ModelSpec) -> Mapping[str, tuple[str, ...]]:
        return self.reserved

    def validate(self, spec: ModelSpec, input: Mapping[str, Any]) -> None:
        return None  # most providers' rules are all in their ModelSpec

    async def find_submission(self, job: JobRecord) -> Submission | None:
        return None  # called only when unknown_outcome is "lookup"

    async def cancel(self, provider_task_id: str) -> bool:
        # None of the five documents a cancel endpoint (MindVideo has a `cancelled` status but no way to ask
        # for it, trap 16): a job cancelled in Reelay may still run, and be billed, upstream.
        return False

    def report(self, data: Mapping[str, Any]) -> Report:
        """A task body (a status answer or a webhook's) as a Report: a success without a video is a failure, and a
        failure carries the provider's error."""
        status = self.job_status(self.status_word(data), data)
        output = error = None
        if status == "succeeded":
            output = self.output(data)
            if output is None:
                status, error = "failed", self.no_video(data)
        elif status == "failed":
            error = self.failure(data)
        return Report(
            status=status, provider_task_id=self.task_id(data), output=output, error=error, cost=self.cost(data)
        )

    def status_word(self, data: Mapping[str, Any]) -> str:
        """The task's status word, spelt as the keys of `statuses` are."""
        return str(data.get("status", "")).lower()

    def job_status(self, word: str, data: Mapping[str, Any]) -> Status:
        status = self.statuses.get(word)
        if status is None:
            log.warning("provider.unknown_status", provider=self.name, status=word[:40])
            return "processing"  # an unknown word keeps the job running; polling goes on
        return status

    def output(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The videos of a succeeded task (`{"videos": [{url, thumbnail_url}], "last_frame_url"}`); None if none."""
        raise NotImplementedError

    def failure(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The job error of a failed task."""
        raise NotImplementedError

    def no_video(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The job error of a task reported succeeded without a video."""
        return generation_failed(NO_VIDEO)

    def task_id(self, data: Mapping[str, Any]) -> str | None:
        raise NotImplementedError

    def cost(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        return None  # only some providers report a task's cost

    def error_detail(self, body: Any) -> tuple[str | None, str | None]:
        """(provider code, message) from an error body."""
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                return text(err.get("code")), text(err.get("message"))
            return text(err), text(body.get("message"))
        return None, None

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        creates: bool = False,
    ) -> Any:
        """One request; returns the decoded JSON body of a 2xx answer."""
        url = self.settings.base_url + path
        all_headers = {**self.auth_headers(), **(headers or {})}
        content = None if json is None else msgspec.json.encode(json)
        if content is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            response = await self.client.request(method, url, content=content, params=params, headers=all_headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientError(f"{self.name}: cannot connect ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            # The request may have reached the provider: for a create that is an unknown outcome.
            if creates:
                raise OutcomeUnknown(f"{self.name}: no answer to create ({type(exc).__name__})") from exc
            raise TransientError(f"{self.name}: transport error ({type(exc).__name__})") from exc
        try:
            body: Any = msgspec.json.decode(response.content) if response.content else None
        except msgspec.DecodeError:
            body = None
        status = response.status_code
        if status < 300:
            if body is None:
                raise TransientError(f"{self.name}: answer {status} without a JSON body", maybe_sent=creates)
            return body
        code, message = self.error_detail(body)
        retry_after, retry_at = parse_retry_after(response.headers.get("retry-after"))
        if status == 429 or status == 408:
            if self.min_retry_after:
                retry_after = max(retry_after or 0.0, self.min_retry_after)
            raise TransientError(
                f"{self.name}: {status} {code or ''}".strip(), retry_after=retry_after, retry_at=retry_at, status=status
            )
        if status >= 500:
            # An error answer is a refusal, so resending is safe; only a lost answer is an unknown outcome.
            raise TransientError(
                f"{self.name}: {status} {code or ''} {message or ''}".strip(),
                retry_after=retry_after,
                retry_at=retry_at,
                give_up_after=self.server_error_attempts if creates else None,
                provider_code=code,
            )
        raise PermanentError(message or f"{self.name} answered {status}", provider_code=code, status=status)


class PollOnlyProvider(HttpProvider):
    """A provider that sends no webhooks: anything posted to its callback URL is not from it."""

    label: ClassVar[str]  # its name in messages
    signs_webhooks: ClassVar[bool] = False

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, *, now: float, job: JobRecord | None) -> None:
        raise SignatureError("signing_not_configured", f"{self.label} sends no webhooks; its jobs are polled")

    def parse_webhook(self, body: bytes) -> WebhookNotice:
        raise ValueError(f"{self.label} sends no webhooks")

    def needs_confirmation(self, notice: WebhookNotice, job: JobRecord) -> bool:
        return True  # only the status endpoint speaks for it


def text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def passed_options(spec: ModelSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """The job's `provider_options` that its model passes through; validation refused any other key, and a job
    stored before that check cannot slip one past it either."""
    allowed = dict(spec.provider_options)
    return {key: value for key, value in (given.get("provider_options") or {}).items() if key in allowed}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


NO_VIDEO = "the provider reported success without a video"


def generation_failed(message: str, provider_code: str | None = None) -> dict[str, Any]:
    """The job error for a generation the provider failed, or reported done without a video."""
    error = {"code": "generation_failed", "message": message}
    if provider_code is not None:
        error["provider_code"] = provider_code
    return error
