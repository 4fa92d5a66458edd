"""Plain records that cross the storage boundary: what is stored, not how it is shown."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from enum import IntEnum
from typing import Any

import msgspec


class Stage(IntEnum):
    """How far a job has come; a job's stage never decreases, except back to QUEUED when a route's `retry_failed`
    moves it to its next candidate (see service/lifecycle.py)."""

    QUEUED = 0
    SUBMITTED = 1
    PROCESSING = 2
    TERMINAL = 3


class DispatchState:
    """Outbox state of a job's upstream create."""

    PENDING = "pending"  # not yet sent, or safe to send again
    SENDING = "sending"  # a create may be in flight; its outcome is unknown after a crash
    DONE = "done"  # the provider accepted it, or the job ended before it was sent


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    secret_hash: bytes
    created_at: str
    revoked_at: str | None = None
    # A budget: a limit per unit (None: no limit in it) for each period; `budget_period` is "day", "month" or
    # "total" (UTC periods), None when the key has no limit.
    budget_usd: Decimal | None = None
    budget_credits: Decimal | None = None
    budget_period: str | None = None

    def limits(self) -> dict[str, Decimal | None]:
        """The key's limit in each budget unit."""
        return {"usd": self.budget_usd, "credits": self.budget_credits}

    @property
    def has_budget(self) -> bool:
        return self.budget_usd is not None or self.budget_credits is not None


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    api_key_id: str
    model: str
    provider: str
    status: str
    stage: int
    input: dict[str, Any]
    metadata: dict[str, str]
    cost: dict[str, Any]
    callback_token: str
    created_at: str
    updated_at: str
    deadline_at: float
    provider_task_id: str | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    completed_at: str | None = None
    dispatch_state: str = DispatchState.PENDING
    dispatch_attempts: int = 0
    next_attempt_at: float | None = None
    next_poll_at: float | None = None
    poll_attempts: int = 0
    lease_until: float | None = None
    webhook_url: str | None = None  # the caller's receiver for this job's events (checked by the service)
    webhook_events: list[str] | None = None  # event types sent to `webhook_url`; None when there is no URL
    # Routes: `model` is what the caller asked for (a route id or a model id); `routed_model` is the model id the
    # job is on now (its `provider`'s); None only in rows written before routes existed, read as `model`.
    routed_model: str | None = None
    # Every candidate the job was put on, oldest first, each an `Attempt` as plain data (see `Attempt`).
    attempts: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # What the key's budget holds for this job (a `Reservation` as plain data); None when the key has no budget.
    reservation: dict[str, Any] | None = None

    @property
    def served_model(self) -> str:
        """The model id the job is on now: its candidate on a route, else its model."""
        return self.routed_model or self.model


class Attempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One candidate a job was put on (stored in `JobRecord.attempts` as plain data, shown as is in the job).

    `left` says why the job left it (None while the job is on it): one of `LEFT_REASONS`. `cost` is what the
    provider said the task cost, for a candidate left after it accepted (only with a route's `retry_failed`).
    """

    model: str
    provider: str
    started_at: str
    provider_task_id: str | None = None
    left: str | None = None
    left_at: str | None = None
    error: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    answer_lost: bool = False  # a create's answer was lost here: left only where the provider proves no task


# Why a job left a candidate (`Attempt.left`, and `reason` of its job.rerouted event).
LEFT_REASONS = (
    "rejected",  # the provider refused the create (a 4xx: bad input for it, no credits, unauthorized)
    "unavailable",  # REELAY_ROUTE_TRANSIENT_ATTEMPTS transient failures in a row (429, 5xx, connection errors)
    "circuit_open",  # the provider's circuit was open when the job was to be sent
    "not_configured",  # the provider has no API key here
    "not_created",  # the create's answer was lost, and the provider's lookup proved no task exists
    "generation_failed",  # the provider failed the generation after accepting it (only with `retry_failed`)
)


class Reservation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a key's budget holds for a job: per unit, an exact decimal as a string (JSON has no decimal type).

    `period` names the budget period the job was created in ("total", "day:2026-12-06", "month:2026-12"); the
    job is settled against that period even after it ends. A unit is absent when the budget has no limit in it.
    """

    period: str
    usd: str | None = None
    credits: str | None = None


BUDGET_UNITS = ("usd", "credits")
BUDGET_PERIODS = ("day", "month", "total")


class BudgetTotals(msgspec.Struct, frozen=True, kw_only=True):
    """A key's running totals in one budget period (its `budget_periods` row): what unfinished jobs hold
    (`reserved_*`), what finished ones cost (`spent_*`), and the highest threshold (0, 80 or 100 %) announced."""

    api_key_id: str
    period: str
    reserved_usd: Decimal = Decimal(0)
    spent_usd: Decimal = Decimal(0)
    reserved_credits: Decimal = Decimal(0)
    spent_credits: Decimal = Decimal(0)
    alerted_usd: int = 0
    alerted_credits: int = 0

    def reserved(self, unit: str) -> Decimal:
        value: Decimal = getattr(self, f"reserved_{unit}")
        return value

    def spent(self, unit: str) -> Decimal:
        value: Decimal = getattr(self, f"spent_{unit}")
        return value

    def alerted(self, unit: str) -> int:
        value: int = getattr(self, f"alerted_{unit}")
        return value


# How every backend lays a JobRecord out in its `jobs` table: set once at insert, then rewritten on each update.
JOB_FIXED_COLUMNS = (
    "id",
    "api_key_id",
    "model",
    "input",
    "metadata",
    "callback_token",
    "created_at",
    "webhook_url",
    "webhook_events",
    "reservation",
)
JOB_MUTABLE_COLUMNS = (
    "provider",  # a route moves a job from one candidate's provider to the next
    "routed_model",
    "attempts",
    "status",
    "stage",
    "provider_task_id",
    "output",
    "error",
    "cost",
    "updated_at",
    "completed_at",
    "deadline_at",
    "dispatch_state",
    "dispatch_attempts",
    "next_attempt_at",
    "next_poll_at",
    "poll_attempts",
    "lease_until",
)


class EventRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the event log; `job` is the job's JSON as it was right after the change."""

    id: int
    job_id: str
    api_key_id: str
    type: str
    created_at: str
    job: bytes
    # A JSON object that events of some types carry beside (or, for budget.threshold, instead of) the job:
    # job.rerouted's {"from", "to", "reason"}; budget.threshold's budget figures. None for the others.
    detail: bytes | None = None
    deliveries: int = 0  # caller webhook deliveries recorded with it (the deliverer is woken when there are)


class IdempotencyClaim(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    request_hash: str


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """Identifies one delivered webhook so a redelivery is recognised."""

    provider: str
    key: str


class CreateOutcome(msgspec.Struct, frozen=True, kw_only=True):
    job: JobRecord
    created: bool
    event: EventRecord | None = None


class Declined(msgspec.Struct, frozen=True):
    """A decision to leave a job as it is, and why: the update then writes nothing, not even its receipt."""

    reason: str


class UpdateOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What an update did: `job` is the job as it now stands; `declined` is the reason a decision gave for
    writing nothing, if it gave one."""

    job: JobRecord
    event: EventRecord | None = None
    changed: bool = False
    duplicate: bool = False
    declined: str | None = None


class PollReschedule(msgspec.Struct, frozen=True, kw_only=True):
    """A status check whose answer changed nothing: the job as the poller claimed it, and when to check it next."""

    job: JobRecord
    next_poll_at: float


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    status: str | None = None
    model: str | None = None
    provider: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class UsageRow(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs of one key grouped by creation day, model and status, with their costs summed exactly.

    A sum is None when no job of the group has that figure; `without` counts, per figure, the jobs that lack it
    (no published price, or not charged yet), which its sum leaves out.
    """

    day: str
    model: str
    status: str
    jobs: int
    credits_estimate: Decimal | None = None
    credits_charged: Decimal | None = None
    usd_estimate: Decimal | None = None
    usd_charged: Decimal | None = None
    without: dict[str, int] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UsageRow:
        """From (day, model, status, jobs, then a sum and a count of jobs with the figure per COST_FIELDS), as
        both backends select it; a sum arrives as exact text (SQLite) or numeric (PostgreSQL), never as float."""
        jobs = int(row[3])
        pairs = dict(zip(COST_FIELDS, zip(row[4::2], row[5::2], strict=True), strict=True))
        sums = {field: None if total is None else Decimal(total) for field, (total, _) in pairs.items()}
        without = {field: jobs - int(having) for field, (_, having) in pairs.items()}
        return cls(day=row[0], model=row[1], status=row[2], jobs=jobs, without=without, **sums)


COST_FIELDS = ("credits_estimate", "credits_charged", "usd_estimate", "usd_charged")


class PruneCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Rows a retention pass removed, or would remove."""

    jobs: int = 0
    events: int = 0
    webhook_receipts: int = 0
    idempotency_keys: int = 0
    deliveries: int = 0  # caller webhook deliveries (with their attempts) of pruned jobs, and old test deliveries


class BackupReport(msgspec.Struct, frozen=True, kw_only=True):
    """A database file just written by a backup or a restore, as verified after writing."""

    path: str
    size_bytes: int
    jobs: int
    events: int
    schema_version: int


# -- caller webhooks ---------------------------------------------------------------------------


class DeliveryStatus:
    """Where a delivery stands. `pending` is waiting for its next attempt (or is being sent); `succeeded` got a
    2xx; `failed` ran out of attempts, or its endpoint was disabled or deleted (a resend makes it pending again)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ALL = (PENDING, SUCCEEDED, FAILED)


class SigningSecret(msgspec.Struct, frozen=True, kw_only=True):
    """A signing secret (`whsec_…`) and, for a while after a rotation, the one it replaced."""

    secret: str
    previous: str | None = None
    previous_expires_at: float | None = None  # unix time; the previous secret signs beside `secret` until then

    def signing(self, now: float) -> tuple[str, ...]:
        """The secrets a delivery attempted at `now` is signed with: the current one, and the previous one
        during its overlap."""
        if self.previous is not None and self.previous_expires_at is not None and now < self.previous_expires_at:
            return (self.secret, self.previous)
        return (self.secret,)

    def rotated(self, new_secret: str, now: float, overlap_seconds: float) -> SigningSecret:
        return SigningSecret(secret=new_secret, previous=self.secret, previous_expires_at=now + overlap_seconds)


class EndpointRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A key's webhook endpoint: every event of the key's jobs whose type its `events` match is delivered to it.

    `events` holds event types, or "*" for every type.
    """

    id: str
    api_key_id: str
    url: str
    events: list[str]
    description: str
    signing: SigningSecret
    created_at: str
    updated_at: str
    disabled: bool = False
    disabled_reason: str | None = None  # "gone" (a 410), "failing" (5 days of failures), "by_request", None
    failing_since: float | None = None  # unix time of the first failed attempt since the last success

    def wants(self, event_type: str) -> bool:
        return takes(self.events, event_type)


def takes(events: Sequence[str], event_type: str) -> bool:
    """Whether an event filter (event types, or "*" for every type) takes `event_type`."""
    return "*" in events or event_type in events


class EndpointChange(msgspec.Struct, frozen=True, kw_only=True):
    """A PATCH of an endpoint: None leaves a field as it is. Disabling fails its pending deliveries; enabling
    clears `disabled_reason` and `failing_since`."""

    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    disabled: bool | None = None


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One message to one receiver. Its `id` is the `webhook-id` of every attempt, so receivers dedupe on it.

    Either `endpoint_id` is set (a key's endpoint: sent to the endpoint's current URL with its secret), or
    it is None (a job's `webhook_url`: sent to `url` with the key's secret). `target` groups deliveries that go
    to one receiver, for the per-receiver concurrency cap: the endpoint id, or "url:" + the job's URL.
    `event_id` names the logged event whose SSE data the body carries; a `webhook.test` has none and keeps its
    body in `payload` instead.
    """

    id: str
    api_key_id: str
    target: str
    url: str
    event_type: str
    status: str
    created_at: str
    updated_at: str
    job_id: str | None = None
    endpoint_id: str | None = None
    event_id: int | None = None
    payload: bytes | None = None
    attempts: int = 0  # attempts made in all (the attempt log)
    round_attempts: int = 0  # attempts since it was created or last resent: the index into the retry schedule
    next_attempt_at: float | None = None  # unix time; None unless pending
    last_status: int | None = None  # HTTP status of the last attempt, None if none or a network error


class ClaimedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery leased to one deliverer, with all it needs to send it: where, signed with what, and what.

    `url` is the endpoint's current URL (or the job's `webhook_url`); `signing` is the endpoint's secret (or
    the key's); `event` is the logged event the body carries (None for a `webhook.test`, which has `payload`).
    """

    delivery: DeliveryRecord
    url: str
    signing: SigningSecret
    event: EventRecord | None = None


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a delivery, as the attempt log shows it."""

    delivery_id: str
    attempted_at: str  # ISO 8601 UTC
    duration_ms: float
    status_code: int | None = None  # None when no HTTP response came (network error, timeout, refusal)
    response_body: str | None = None  # the first 1 KB of the response body, decoded leniently
    error: str | None = None  # what went wrong, when it did: "timeout after 15 s", "redirect (301) to …", …


class AttemptResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the deliverer decided after an attempt: the attempt to log and the delivery's next state.

    `status` is SUCCEEDED, FAILED (no more attempts) or PENDING with `next_attempt_at`. `disable_endpoint` names
    a reason to disable the delivery's endpoint now ("gone" after a 410). `failed_at` is the attempt's unix time:
    an endpoint failing since more than `disable_after_seconds` before it is disabled as "failing".
    """

    attempt: AttemptRecord
    status: str
    at: float
    next_attempt_at: float | None = None
    disable_endpoint: str | None = None


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery with its attempts, oldest first (what the attempt log APIs show)."""

    delivery: DeliveryRecord
    attempts: list[AttemptRecord]


class DeliveryCounts(msgspec.Struct, frozen=True, kw_only=True):
    """For the metrics: deliveries waiting to be sent, and endpoints disabled, across the database."""

    pending: int
    disabled_endpoints: int
