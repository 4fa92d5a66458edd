"""The job writes both backends share, written once: creating a job under an idempotency key, and updating one
through its decide function and webhook receipt. A backend supplies the SQL of each step (`WriteSteps`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from storage import archives, budgets, webhooks
from storage.base import Clock, Decide, JobEncoder
from storage.errors import IdempotencyConflict, JobNotFound
from storage.records import (
    BudgetTotals,
    CreateOutcome,
    Declined,
    DeliveryRecord,
    EventRecord,
    IdempotencyClaim,
    JobRecord,
    Receipt,
    Stage,
    UpdateOutcome,
)

BUDGET_THRESHOLD = "budget.threshold"
BudgetChange = Callable[[BudgetTotals, budgets.Limits], BudgetTotals]


class WriteSteps(Protocol):
    """One backend's SQL for each step of a write, inside a transaction it holds open."""

    encode_job: JobEncoder
    """The store's encoder of the job snapshot each event carries."""

    logged: list[EventRecord]
    """The events logged in this transaction so far, announced once it commits."""

    clock: Clock
    """The store's clock, which dates the deliveries an event makes."""

    first_delivery_delay: float
    """Seconds after its event a caller webhook delivery is first due."""

    archive: bool
    """Whether a job that succeeds with result URLs gets a row in the archiver's queue (the asset store is on)."""

    async def select_job(self, job_id: str, *, for_update: bool = False) -> JobRecord | None:
        """One job; with `for_update`, locked against other writers until the transaction ends."""

    async def insert_job(self, job: JobRecord, inline: Mapping[str, str] | None) -> None:
        """Insert a new job, and its inline data apart from it."""

    async def save_job(self, job: JobRecord) -> None:
        """Write a job's mutable columns. Raises TaskTaken when its provider task id is another job's."""

    async def insert_event(
        self, job_id: str, api_key_id: str, created_at: str, event_type: str, snapshot: bytes, detail: bytes | None
    ) -> int:
        """Insert an event (of a job, or of the key alone with job id ""), with its detail object if it has one;
        returns its id."""

    async def insert_key(self, job: JobRecord, claim: IdempotencyClaim) -> bool:
        """Record an idempotency key for `job`; False, writing nothing, when the key is held already."""

    async def held_key(self, api_key_id: str, key: str) -> tuple[str, str] | None:
        """The (request hash, job id) an idempotency key is held with, locked; None if it is not held."""

    async def reassign_key(self, job: JobRecord, claim: IdempotencyClaim) -> None:
        """Give a held idempotency key to `job` instead."""

    async def record_receipt(self, receipt: Receipt, received_at: str) -> bool:
        """Record a webhook receipt; False, writing nothing, when it is recorded already."""

    async def forget_receipt(self, receipt: Receipt) -> None:
        """Remove a receipt recorded earlier in this transaction."""

    async def enabled_endpoints(self, api_key_id: str) -> Sequence[Sequence[Any]]:
        """The key's enabled webhook endpoints as (id, url, events as JSON): one indexed lookup."""

    async def insert_deliveries(self, deliveries: list[DeliveryRecord]) -> None:
        """Insert pending caller webhook deliveries."""

    async def lock_budget(self, api_key_id: str, period: str) -> tuple[BudgetTotals, budgets.Limits]:
        """The key's totals in a budget period (a row of zeros inserted first if it has none), locked against
        every other writer until the transaction ends, with the key's limits as stored now."""

    async def save_budget(self, totals: BudgetTotals) -> None:
        """Write a budget period's totals back."""

    async def insert_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        """Queue a succeeded job's outputs for the archiver (storage.archives), due now."""

    async def close_archive(self, job_id: str, items: list[dict[str, Any]]) -> None:
        """Mark a job's archive done, with the final result of each item."""


async def create_job(
    steps: WriteSteps,
    job: JobRecord,
    event_type: str,
    idempotency: IdempotencyClaim | None,
    inline: Mapping[str, str] | None,
) -> CreateOutcome:
    """`Store.create_job` inside the backend's transaction."""
    if idempotency is not None:
        existing = await _claim_key(steps, job, idempotency)
        if existing is not None:
            return CreateOutcome(job=existing, created=False)  # a replay reserves nothing
    alerts: list[bytes] = []
    if job.reservation is not None:
        reservation = job.reservation
        alerts = await _budget(steps, job, lambda totals, limits: budgets.reserve(totals, limits, reservation))
    await steps.insert_job(job, inline)
    event = await _append_event(steps, job, event_type)
    await _announce(steps, job.api_key_id, job.created_at, alerts)
    return CreateOutcome(job=job, created=True, event=event)


async def _budget(steps: WriteSteps, job: JobRecord, change: BudgetChange) -> list[bytes]:
    """Apply `change` (a reservation, a settlement) to the totals of the job's budget period, held locked for the
    rest of the transaction; returns the details of the budget.threshold events it makes. Raises OverBudget."""
    totals, limits = await steps.lock_budget(job.api_key_id, (job.reservation or {})["period"])
    totals, alerts = budgets.announce(change(totals, limits), limits)
    await steps.save_budget(totals)
    return alerts


async def _claim_key(steps: WriteSteps, job: JobRecord, claim: IdempotencyClaim) -> JobRecord | None:
    """Hold the key for `job`, or return the job it already made; None means go on and create `job`."""
    while True:
        # A concurrent create with the same key makes this insert wait for its outcome: one of them wins.
        if await steps.insert_key(job, claim):
            return None
        held = await steps.held_key(job.api_key_id, claim.key)
        if held is None:
            continue  # pruned between the two statements: claim it afresh
        request_hash, job_id = held
        existing = await steps.select_job(job_id)
        if existing is None:  # its job was pruned: the key expired with it
            await steps.reassign_key(job, claim)
            return None
        if request_hash != claim.request_hash:
            raise IdempotencyConflict(job_id)
        return existing


async def update_job(
    steps: WriteSteps, job_id: str, decide: Decide, receipt: Receipt | None, received_at: str
) -> UpdateOutcome:
    """`Store.update_job` inside the backend's transaction; `received_at` stamps the receipt."""
    # The row lock makes read-decide-write atomic against every other writer, in any process.
    current = await steps.select_job(job_id, for_update=True)
    if current is None:
        raise JobNotFound(job_id)
    if receipt is not None and not await steps.record_receipt(receipt, received_at):
        return UpdateOutcome(job=current, duplicate=True)
    decision = decide(current)
    if isinstance(decision, Declined):
        if receipt is not None:
            await steps.forget_receipt(receipt)  # a declined webhook is judged afresh when it comes again
        return UpdateOutcome(job=current, declined=decision.reason)
    if decision is None:
        return UpdateOutcome(job=current)
    job, event_type = decision
    await steps.save_job(job)
    if steps.archive and job.status == "succeeded" and current.status != "succeeded":
        # Queued with the success itself: a crash right after it cannot lose the copy.
        items = archives.asset_items(job.output)
        if items:
            await steps.insert_archive(job.id, items)
    alerts: list[bytes] = []
    if job.reservation is not None and job.stage == Stage.TERMINAL and current.stage != Stage.TERMINAL:
        # Settled with the terminal write itself: a job's reservation never outlives it, nor is released twice.
        alerts = await _budget(steps, job, lambda totals, _: budgets.settle(totals, job))
    event = None if event_type is None else await _append_event(steps, job, event_type)
    await _announce(steps, job.api_key_id, job.updated_at, alerts)
    return UpdateOutcome(job=job, event=event, changed=True)


async def finish_archive(
    steps: WriteSteps, job_id: str, decide: Decide, items: list[dict[str, Any]], received_at: str
) -> UpdateOutcome:
    """`Store.finish_archive`: the job's update (its `output.assets` and `job.archived`) and the archive row's close,
    in one transaction."""
    outcome = await update_job(steps, job_id, decide, None, received_at)
    await steps.close_archive(job_id, items)
    return outcome


async def _append_event(steps: WriteSteps, job: JobRecord, event_type: str) -> EventRecord:
    """Log an event carrying the job's snapshot; it is announced once the transaction commits."""
    # Both before the insert: PostgreSQL's writers wait for each other from there on.
    snapshot = steps.encode_job(job)
    endpoints = await steps.enabled_endpoints(job.api_key_id)

    def deliveries(event_id: int) -> list[DeliveryRecord]:
        return webhooks.new_deliveries(job, event_type, event_id, endpoints, steps.clock(), steps.first_delivery_delay)

    detail = event_detail(job, event_type)
    return await _log(steps, job.id, job.api_key_id, job.updated_at, event_type, snapshot, detail, deliveries)


async def _announce(steps: WriteSteps, api_key_id: str, at: str, alerts: list[bytes]) -> None:
    """Log a budget.threshold event per detail: an event of the key alone (job id "", job snapshot null), which its
    SSE stream and its endpoints that take the type get, never a job's stream or `webhook_url`."""
    for detail in alerts:
        endpoints = await steps.enabled_endpoints(api_key_id)

        def deliveries(event_id: int, endpoints: Sequence[Sequence[Any]] = endpoints) -> list[DeliveryRecord]:
            clock, delay = steps.clock(), steps.first_delivery_delay
            return webhooks.key_deliveries(api_key_id, BUDGET_THRESHOLD, event_id, endpoints, clock, delay)

        await _log(steps, "", api_key_id, at, BUDGET_THRESHOLD, b"null", detail, deliveries)


async def _log(
    steps: WriteSteps,
    job_id: str,
    api_key_id: str,
    at: str,
    event_type: str,
    snapshot: bytes,
    detail: bytes | None,
    deliveries_of: Callable[[int], list[DeliveryRecord]],
) -> EventRecord:
    """Insert an event and, in the same transaction, the caller webhook deliveries it makes (an event is never
    logged without them); it is announced once the transaction commits."""
    event_id = await steps.insert_event(job_id, api_key_id, at, event_type, snapshot, detail)
    deliveries = deliveries_of(event_id)
    if deliveries:
        await steps.insert_deliveries(deliveries)
    event = EventRecord(
        id=event_id,
        job_id=job_id,
        api_key_id=api_key_id,
        type=event_type,
        created_at=at,
        job=snapshot,
        detail=detail,
        deliveries=len(deliveries),
    )
    steps.logged.append(event)
    return event


def event_detail(job: JobRecord, event_type: str) -> bytes | None:
    """The detail object an event of the job carries: job.rerouted's move, read from the job's last two attempts
    (the one it left, and the one it is on now); None for the other job events."""
    if event_type != "job.rerouted" or len(job.attempts) < 2:
        return None
    left, now = job.attempts[-2], job.attempts[-1]
    return _encode({"from": left["model"], "to": now["model"], "reason": left.get("left")})


_encode = msgspec.json.Encoder().encode
