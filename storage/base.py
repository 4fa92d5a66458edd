"""The storage contract: domain-level async operations that every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from storage.archives import ArchiveRecord
from storage.health import CircuitPolicy, ProviderHealthRecord
from storage.records import (
    ApiKeyRecord,
    AttemptResult,
    BackupReport,
    BudgetTotals,
    ClaimedDelivery,
    CreateOutcome,
    Declined,
    DeliveryCounts,
    DeliveryRecord,
    DeliveryView,
    EndpointChange,
    EndpointRecord,
    EventRecord,
    IdempotencyClaim,
    JobFilter,
    JobRecord,
    PruneCounts,
    Receipt,
    SigningSecret,
    UpdateOutcome,
    UsageRow,
)
from storage.retention import BeforeJobsPruned

JobEncoder = Callable[[JobRecord], bytes]
"""Turns a job into the JSON snapshot stored with each event (the service decides the shape)."""

EventListener = Callable[[Sequence[EventRecord]], None]
"""Called with newly committed events, in commit order."""

Decision = tuple[JobRecord, str | None] | Declined | None
"""What a decide function returns: the job's new state and the event type to log (None logs none); None when
there is nothing to change; or Declined, when the job must be left as it is for a reason the caller reads back."""

Decide = Callable[[JobRecord], Decision]

Clock = Callable[[], float]
"""The time now in seconds since the epoch, injected by whoever builds the store (time.time at the edge)."""

BackupProgress = Callable[[int, int], None]
"""Called on the event loop with (pages copied, total pages) as a database copy advances."""


class Store(Protocol):
    """Durable home of keys, jobs, the event log, webhook receipts and idempotency keys."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None:
        """Release connections; pending writes are finished first."""

    async def migrate(self) -> list[str]:
        """Apply pending migrations and return the names of those applied."""

    async def check(self) -> None:
        """Raise StorageUnavailable or SchemaOutdated unless the store is ready to serve."""

    def add_listener(self, listener: EventListener) -> None:
        """Register a callback for committed events, called in event-id order.

        On a database that several processes share, it gets the events every one of them commits.
        """

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        """Store a new API key (its secret only as a hash)."""

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """One API key, revoked or not."""

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every API key, oldest first."""

    async def revoke_api_key(self, key_id: str, at: str) -> bool:
        """Revoke a key; False if it does not exist or was already revoked."""

    async def set_api_key_budget(
        self, key_id: str, *, usd: Decimal | None, credits: Decimal | None, period: str | None
    ) -> bool:
        """Replace a key's budget limits and period (None: no limit); False if there is no such key."""

    async def budget_totals(self, api_key_id: str, period: str) -> BudgetTotals:
        """A key's running totals in a budget period ("total", "day:2026-12-06", "month:2026-12"); zeros when
        no job counted in it yet."""

    async def create_job(
        self,
        job: JobRecord,
        event_type: str,
        *,
        idempotency: IdempotencyClaim | None = None,
        inline: Mapping[str, str] | None = None,
    ) -> CreateOutcome:
        """Insert a job and its first event, or return the job an idempotency key already made.

        A job with a `reservation` holds it in its key's budget period in the same transaction, which also reads
        the key's limits: OverBudget, writing nothing, when a limited unit cannot take it (every create of the key
        in that period waits for this one, in any process); budget.threshold events are logged when spent +
        reserved reaches 80 or 100 % of a limit. A replay of an idempotency key reserves nothing.

        `inline` is the job's inline data (by the names its input uses for it), stored once apart from the job:
        no job read, list or event carries it; only `inline_data` reads it back.
        Raises IdempotencyConflict when the key was used with a different request.
        """

    async def get_job(self, job_id: str) -> JobRecord | None:
        """One job by id."""

    async def inline_data(self, job_id: str) -> dict[str, str]:
        """The inline data stored with a job's creation; empty if none (or no such job)."""

    async def find_job_by_task(self, provider: str, provider_task_id: str) -> JobRecord | None:
        """The job a provider's task id belongs to."""

    async def list_jobs(
        self, api_key_id: str, filters: JobFilter, *, limit: int, before_id: str | None = None
    ) -> list[JobRecord]:
        """A key's jobs, newest first, starting strictly before `before_id`."""

    async def update_job(self, job_id: str, decide: Decide, *, receipt: Receipt | None = None) -> UpdateOutcome:
        """Atomically read a job, let `decide` compute its next state, write it and log its event.

        The write that makes a job with a reservation terminal settles it in the same transaction: the reservation
        leaves its period's `reserved`, and `spent` gains what the job cost (storage.budgets.charge).
        With a receipt, a webhook already recorded is reported as duplicate and nothing changes;
        otherwise the receipt is recorded in the same transaction, unless `decide` declines. The store stamps
        the receipt with its clock. Raises JobNotFound when there is no such job, and TaskTaken, writing
        nothing, when the new state names a provider task id that another job holds.
        """

    async def claim_dispatch(self, now: float, limit: int, lease_seconds: float) -> list[JobRecord]:
        """Lease jobs whose upstream create is due."""

    async def claim_polls(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        providers: Sequence[str] | None = None,
        exclude: bool = False,
    ) -> list[JobRecord]:
        """Lease submitted, unfinished jobs whose status check is due, oldest due first; with `providers`, only
        jobs on those providers (`exclude`: only jobs on the others)."""

    async def oldest_due_polls(self, providers: Sequence[str]) -> dict[str, float]:
        """Each provider's earliest `next_poll_at` among its unfinished jobs (left out when it has none)."""

    async def release_leases(self) -> int:
        """Drop the leases this store holds (jobs' and deliveries'), so they can be claimed again at once;
        return how many.

        A single-process store (SQLite) holds every lease and drops them all. A store shared by several
        processes (PostgreSQL) drops only those this instance claimed: other workers' leases stay until they
        end or expire.
        """

    async def events_after(
        self,
        after_id: int,
        *,
        api_key_id: str | None = None,
        job_id: str | None = None,
        limit: int = 500,
        max_bytes: int | None = None,
    ) -> list[EventRecord]:
        """Logged events with id greater than `after_id`, oldest first.

        With `max_bytes`, no more events than fit in that many bytes of job snapshots, but at least one.
        """

    async def last_event_id(self) -> int:
        """The id of the newest event, or 0."""

    async def usage(self, api_key_id: str, start: str | None, end: str | None) -> list[UsageRow]:
        """The key's jobs created in [start, end), grouped by day, model and status."""

    async def prunable(self, before: str) -> PruneCounts:
        """What `prune(before)` would remove now; removes nothing."""

    async def prune(
        self, before: str, *, batch_size: int = 500, before_jobs_pruned: BeforeJobsPruned | None = None
    ) -> PruneCounts:
        """Delete what is older than the ISO-8601 UTC timestamp `before`, and count it.

        `before_jobs_pruned` is awaited with each batch's job ids before their rows go (their archived assets are
        deleted by it).

        That is: finished jobs (stage TERMINAL) whose `completed_at` is older, with all their events;
        webhook receipts received before it; idempotency keys created before it; the caller webhook deliveries
        (and attempts) of the jobs it deletes, and `webhook.test` deliveries created before it. Unfinished jobs and
        the events of kept jobs are never deleted. Each transaction removes at most `batch_size` jobs
        (or rows), so other writers wait for one batch at most, never for the whole pass.
        """

    async def jobs_with_assets(
        self, completed_before: str, *, after: tuple[str, str] = ("", ""), limit: int
    ) -> list[tuple[str, str]]:
        """(completed_at, id) of succeeded jobs completed before `completed_before` whose output names archived
        `assets` and no `assets_expired_at`, in that order, strictly after `after` (a previous page's last)."""

    # -- caller webhooks -----------------------------------------------------------------------
    #
    # Deliveries are recorded by the job writes themselves: each event a job write logs gets, in the same
    # transaction, one pending delivery for the job's `webhook_url` (when the event's type is in the job's
    # `webhook_events`) and one per enabled endpoint of the job's key whose `events` match (`wants`), due
    # `first_delivery_delay` seconds (given to `create_store`, 0 by default) after the store's clock reads at the
    # write. The event's `deliveries` counts them. Delivery ids are made by the store: "msg_" + 26 characters,
    # increasing with creation time, so they sort in creation order.

    async def webhook_secret(self, api_key_id: str, *, new_secret: str) -> SigningSecret:
        """The key's signing secret for per-job webhooks; stores `new_secret` first if the key has none yet."""

    async def rotate_webhook_secret(
        self, api_key_id: str, *, new_secret: str, now: float, overlap_seconds: float
    ) -> SigningSecret:
        """Make `new_secret` the key's secret; the one it replaces keeps signing for `overlap_seconds`."""

    async def create_endpoint(self, endpoint: EndpointRecord, *, max_per_key: int) -> bool:
        """Store a new endpoint; False, storing nothing, when the key has `max_per_key` endpoints already."""

    async def list_endpoints(self, api_key_id: str) -> list[EndpointRecord]:
        """A key's endpoints, oldest first."""

    async def get_endpoint(self, api_key_id: str, endpoint_id: str) -> EndpointRecord | None:
        """One of a key's endpoints."""

    async def update_endpoint(
        self, api_key_id: str, endpoint_id: str, change: EndpointChange, *, now: float
    ) -> EndpointRecord | None:
        """Apply a PATCH; None if the key has no such endpoint. Disabling it (by request: reason "by_request")
        fails its pending deliveries in the same transaction."""

    async def delete_endpoint(self, api_key_id: str, endpoint_id: str, *, now: float) -> bool:
        """Delete an endpoint and fail its pending deliveries; its deliveries and attempts stay readable."""

    async def rotate_endpoint_secret(
        self, api_key_id: str, endpoint_id: str, *, new_secret: str, now: float, overlap_seconds: float
    ) -> EndpointRecord | None:
        """Give an endpoint a new secret; the old one keeps signing for `overlap_seconds`."""

    async def create_test_delivery(self, endpoint: EndpointRecord, payload: bytes, *, now: float) -> DeliveryRecord:
        """Record a pending `webhook.test` delivery to the endpoint, due now, whose body is `payload`."""

    async def claim_deliveries(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        per_target: int,
        busy: dict[str, int],
        explore: bool = True,
    ) -> list[ClaimedDelivery]:
        """Lease up to `limit` pending deliveries due at `now`, oldest due first, at most `per_target` to one
        target, minus what the caller already has in flight to it (`busy`: target -> deliveries in flight).
        Deliveries of a disabled endpoint are never claimed. On a shared database, rows another worker is
        claiming are skipped, never waited for (SKIP LOCKED), and each lease records this store instance.

        With `explore`, a target with no room left is skipped entirely in the search, so one slow receiver's
        backlog never hides another's; that search may read the whole backlog of the full ones. Without it,
        only the oldest due deliveries are read (a few windows' worth): cheap, for a claim made because a slot
        of a known receiver came free."""

    async def finish_attempts(self, results: list[AttemptResult], *, disable_after_seconds: float) -> list[str]:
        """Log each attempt and move its delivery on, in one transaction; return the endpoint ids this disabled.

        Per result: the attempt is appended; the delivery's `attempts` and `round_attempts` grow by one, its
        status, `next_attempt_at` and `last_status` are set, and its lease is dropped. Its endpoint, if it has
        one: a success clears `failing_since`; a failure sets it if unset, and when it is older than
        `disable_after_seconds` at the attempt's time the endpoint is disabled as "failing"; `disable_endpoint`
        disables it with that reason. Disabling an endpoint fails its other pending deliveries.
        A result for a delivery that is no longer pending (resent, deleted) still logs its attempt.
        """

    async def job_deliveries(self, api_key_id: str, job_id: str) -> list[DeliveryView]:
        """Every delivery of one of the key's jobs with its attempts, oldest first."""

    async def endpoint_deliveries(
        self, api_key_id: str, endpoint_id: str, *, status: str | None, limit: int, before_id: str | None = None
    ) -> list[DeliveryView]:
        """An endpoint's deliveries with their attempts, newest first, starting strictly before `before_id`."""

    async def get_delivery(self, api_key_id: str, delivery_id: str) -> DeliveryView | None:
        """One of the key's deliveries with its attempts."""

    async def resend_delivery(self, api_key_id: str, delivery_id: str, *, now: float) -> DeliveryRecord | None:
        """Make a delivery pending again, due now, with a fresh retry schedule (`round_attempts` 0) and the
        same id; None if the key has no such delivery. Its earlier attempts stay in the log."""

    async def recover_deliveries(self, api_key_id: str, endpoint_id: str, *, since: str, until: str, now: float) -> int:
        """Resend (as `resend_delivery`) every failed delivery of the endpoint created in [since, until)."""

    async def delivery_counts(self) -> DeliveryCounts:
        """Pending deliveries and disabled endpoints in the whole database (cheap: index-only counts)."""

    # -- provider health -----------------------------------------------------------------------
    #
    # One circuit per provider (storage.health), shared by every process on the database: no row is a closed
    # circuit with no failures. `owner` names the process asking (its probe is recognised by it).

    async def provider_health(self) -> list[ProviderHealthRecord]:
        """Every provider's circuit that has a row, by provider name."""

    async def record_provider_outcome(
        self, provider: str, *, failed: bool, owner: str, error: str | None, now: float, policy: CircuitPolicy
    ) -> ProviderHealthRecord:
        """Apply one create's outcome atomically (see `storage.health.after_outcome`) and return the new state.
        `failed`: a failure that counts against the provider; otherwise the create closes the circuit."""

    async def claim_provider_probe(self, provider: str, *, owner: str, now: float, lease_seconds: float) -> bool:
        """Take the half-open probe: True for exactly one caller, whichever process, once the circuit is open past
        its cool-down, or its last probe's lease (`lease_seconds` from the claim) ran out."""

    async def release_provider_probe(self, provider: str, *, owner: str, probe_until: float, now: float) -> bool:
        """Give back the half-open probe `owner` took with lease `probe_until` when it sent no create: the circuit is
        open again, past its cool-down, so the next caller takes the probe. False when that probe is no longer held
        (its outcome was recorded, or its lease ran out and another took it)."""

    async def jobs_in_flight(self) -> dict[str, int]:
        """Unfinished jobs (not terminal) per provider, from an index."""

    # -- the archiver's queue (storage.archives) --------------------------------------------------
    #
    # A store made with `archive=True` queues, in the write that makes a job succeeded, one row holding what its
    # output has to copy (`asset_items`). Leased like jobs; on a shared database each lease names this instance.

    async def claim_archives(self, now: float, limit: int, lease_seconds: float) -> list[ArchiveRecord]:
        """Lease up to `limit` pending archives due at `now`, oldest due first (SKIP LOCKED where shared)."""

    async def renew_archive(self, job_id: str, until: float) -> None:
        """Extend a pending archive's lease: a long copy is still under way."""

    async def save_archive(self, job_id: str, items: list[dict[str, Any]], next_attempt_at: float) -> None:
        """Keep the items' results so far, count an attempt, and release the lease until `next_attempt_at`."""

    async def finish_archive(self, job_id: str, decide: Decide, items: list[dict[str, Any]]) -> UpdateOutcome:
        """`update_job(job_id, decide)` and, in the same transaction, mark the archive done with `items`.
        Raises JobNotFound when the job is gone (pruned: its archive went with it)."""

    async def server_secret(self, name: str, *, new_value: str) -> str:
        """The service's secret called `name`: `new_value` stored if there is none yet, else the one stored first
        (by any process), so every replica uses the same."""


@runtime_checkable
class SharesLimits(Protocol):
    """A store several replicas share (PostgreSQL): it counts each API key's request rate and open event streams
    for all of them. A store of one process (SQLite) leaves both to the process's memory."""

    async def take_request(self, api_key_id: str, *, rate: float, burst: int) -> float | None:
        """Spend a token of the key's bucket (`rate` per second, up to `burst`): None if there was one, else the
        seconds until there is."""

    async def take_provider_tokens(
        self, provider: str, *, want: int, rate: float, burst: float, reserve: float, create: bool, hold: float
    ) -> tuple[int, float, float]:
        """Take up to `want` whole tokens of the provider's bucket (`rate` per second, up to `burst`) above
        `reserve`; none while a 429's pause lasts, nor for a status check (`create` false) while a create waits. A
        create granted none makes status checks wait `hold` seconds. Returns (granted, tokens left, seconds of
        pause left)."""

    async def refund_provider_tokens(self, provider: str, count: int, *, burst: float) -> None:
        """Give back tokens taken and not spent (no request was sent with them)."""

    async def pause_provider(self, provider: str, seconds: float) -> None:
        """Grant no token of the provider's bucket for `seconds` (the provider answered 429 with Retry-After)."""

    async def open_stream_slot(self, api_key_id: str, slot_id: str, *, cap: int, ttl: float) -> bool:
        """Take a slot for an open stream, live for `ttl` seconds, unless the key already holds `cap` live ones."""

    async def renew_stream_slots(self, slots: Sequence[tuple[str, str]], *, ttl: float) -> None:
        """Keep these (api key id, slot id) slots live for `ttl` seconds more: the holder is still running."""

    async def release_stream_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Give these (api key id, slot id) slots back."""


@runtime_checkable
class SupportsBackup(Protocol):
    """A store that copies its own database file (SQLite). A server database is backed up with its own tools.

    Neither method needs the store to be open, and neither applies migrations.
    """

    async def backup(
        self, target: str | Path, progress: BackupProgress | None = None, *, overwrite: bool = False
    ) -> BackupReport:
        """Write a consistent copy of the database to `target` while it is in use, then verify the copy.

        The copy appears at `target` only once it passed `PRAGMA integrity_check`.
        """

    async def restore(self, source: str | Path, progress: BackupProgress | None = None) -> BackupReport:
        """Replace the database with the verified backup `source`, in one transaction.

        Raises StorageUnavailable when any other connection has the database open (stop the service first).
        """
