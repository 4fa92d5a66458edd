"""Background work on leased jobs: the dispatcher (outbox of upstream creates) and the poller.

Both claim due jobs with a lease, handle each in its own task under a concurrency cap, and write
every outcome back through the job state machine. Only these loops read the clock; the schedules
they use are pure functions of an attempt number and a random source.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from service import lifecycle
from service.gateway import Gateway
from service.providers.base import (
    ModelSpec,
    OutcomeUnknown,
    PermanentError,
    ProviderAdapter,
    ProviderError,
    Submission,
    TransientError,
)
from service.schedule import Backoff
from storage import DispatchState, JobRecord, Stage, StorageError

log = structlog.get_logger("reelay.worker")


class LeasedLoop:
    """Claims due jobs and runs `handle` for each, at most `concurrency` at a time."""

    name = "loop"

    def __init__(
        self,
        gateway: Gateway,
        *,
        concurrency: int,
        lease_seconds: float = 120.0,
        idle_seconds: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.clock: Callable[[], float] = gateway.clock
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.idle_seconds = idle_seconds
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        raise NotImplementedError

    async def handle(self, job: JobRecord) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            free = self.concurrency - len(self._inflight)
            claimed: list[JobRecord] = []
            if free > 0:
                try:
                    claimed = await self.claim(self.clock(), free)
                except StorageError as exc:
                    log.error(f"{self.name}.claim_failed", error=str(exc))
            for job in claimed:
                task = asyncio.create_task(self._guarded(job))
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if len(claimed) == free and free > 0:
                continue  # there may be more due right now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_seconds)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _guarded(self, job: JobRecord) -> None:
        bound = structlog.contextvars.bound_contextvars(job_id=job.id, provider=job.provider)
        with bound:
            try:
                await self.handle(job)
            except StorageError as exc:
                # The lease expires and the job is claimed again; nothing is lost.
                log.error(f"{self.name}.storage_failed", error=str(exc))
            except Exception:
                log.exception(f"{self.name}.crashed")

    async def drain(self, grace_seconds: float) -> None:
        """Wait up to `grace_seconds` for in-flight work on shutdown, then cancel what is left."""
        if not self._inflight:
            return
        _, pending = await asyncio.wait(set(self._inflight), timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(f"{self.name}.drain_cancelled", tasks=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _update(self, job: JobRecord, decide: Callable[[JobRecord], Any]) -> JobRecord:
        return (await self.gateway.update_job(job.id, decide)).job

    async def _fail(self, job: JobRecord, code: str, message: str, provider_code: str | None = None) -> None:
        now = self.clock()
        await self._update(
            job, lambda j: lifecycle.failed(j, code=code, message=message, now=now, provider_code=provider_code)
        )


class Dispatcher(LeasedLoop):
    """Sends queued jobs upstream once, retrying transient failures with backoff and jitter."""

    name = "dispatch"

    def __init__(self, gateway: Gateway, *, backoff: Backoff | None = None, **kwargs: Any) -> None:
        super().__init__(gateway, concurrency=gateway.settings.dispatch_concurrency, **kwargs)
        self.backoff = backoff or Backoff()

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        return await self.store.claim_dispatch(now, limit, self.lease_seconds)

    async def handle(self, job: JobRecord) -> None:
        now = self.clock()
        adapter = self.gateway.adapters.get(job.provider)
        spec = self.gateway.models.get(job.model)
        if adapter is None or spec is None:
            await self._fail(job, "provider_unavailable", f"provider {job.provider} is not configured")
            return
        if now >= job.deadline_at:
            await self._fail(job, "timeout", "the job was not accepted by the provider before its deadline")
            return
        if job.dispatch_state == DispatchState.SENDING:
            # An earlier create may have reached the provider; find out before sending again.
            if adapter.unknown_outcome == "lookup":
                try:
                    found = await adapter.find_submission(job)
                except ProviderError as exc:
                    await self._retry(job, exc, maybe_sent=True)
                    return
                if found is not None:
                    log.info("dispatch.recovered", provider_task_id=found.provider_task_id)
                    await self._submitted(job, found.provider_task_id, found.cost, spec.callbacks)
                    return
            elif adapter.unknown_outcome != "idempotency":
                await self._fail(
                    job,
                    "submit_outcome_unknown",
                    "the create request was sent but its answer was lost; it is not resent, to avoid paying twice",
                )
                return
        # Read before the job is marked as being sent: a failed read must leave it safe to send again.
        full_input = await self.gateway.full_input(job)
        job = await self._update(
            job,
            lambda j: lifecycle.rescheduled(
                j, dispatch_state=DispatchState.SENDING, dispatch_attempts=j.dispatch_attempts + 1
            ),
        )
        if job.stage != Stage.QUEUED or job.dispatch_state != DispatchState.SENDING:
            return  # cancelled or completed meanwhile
        # Only the create carries the data URIs; the job written back below does not.
        sent = msgspec.structs.replace(job, input=full_input)
        try:
            submission = await self._create(sent, spec, adapter)
        except PermanentError as exc:
            await self._fail(job, "provider_rejected", exc.message, exc.provider_code)
        except OutcomeUnknown as exc:
            await self._retry(job, exc, maybe_sent=True)
        except TransientError as exc:
            if exc.give_up_after is not None and job.dispatch_attempts >= exc.give_up_after:
                message = f"{exc} (on {job.dispatch_attempts} attempts, so taken as a refusal)"
                await self._fail(job, "provider_rejected", message, exc.provider_code)
            else:
                await self._retry(job, exc, maybe_sent=exc.maybe_sent)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("dispatch.bad_answer", error=str(exc))
            await self._retry(job, exc, maybe_sent=True)
        else:
            await self._submitted(job, submission.provider_task_id, submission.cost, spec.callbacks)

    async def _create(self, job: JobRecord, spec: ModelSpec, adapter: ProviderAdapter) -> Submission:
        """The upstream create, its latency observed by provider and outcome."""
        started = time.perf_counter()
        outcome = "interrupted"  # unless set below: the task was cancelled (shutdown)
        try:
            submission = await adapter.submit(job, spec, self.gateway.callback_url(job, adapter))
            outcome = "accepted"
            return submission
        except Exception as exc:
            outcome = _create_outcome(exc)
            raise
        finally:
            histogram = self.gateway.metrics.upstream_create
            histogram.labels(provider=job.provider, outcome=outcome).observe(time.perf_counter() - started)

    async def _submitted(self, job: JobRecord, task_id: str, cost: dict[str, Any] | None, callbacks: bool) -> None:
        now = self.clock()
        settings = self.gateway.settings
        adapter = self.gateway.adapters[job.provider]
        first_poll = settings.callback_grace_seconds if callbacks else adapter.poll_schedule.delay(0, self.rng)
        await self._update(
            job,
            lambda j: lifecycle.submitted(
                j, provider_task_id=task_id, cost=cost, now=now, next_poll_at=min(now + first_poll, j.deadline_at)
            ),
        )

    async def _retry(self, job: JobRecord, exc: Exception, *, maybe_sent: bool) -> None:
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        delay = self.backoff.delay(job.dispatch_attempts, self.rng, at_least=retry_after)
        state = DispatchState.SENDING if maybe_sent else DispatchState.PENDING
        log.warning("dispatch.retrying", error=str(exc), delay=round(delay, 2), attempt=job.dispatch_attempts)
        next_at = min(self.clock() + delay, job.deadline_at)  # at the deadline the job fails with `timeout`
        await self._update(
            job, lambda j: lifecycle.rescheduled(j, dispatch_state=state, next_attempt_at=next_at, lease_until=None)
        )


def _create_outcome(exc: Exception) -> str:
    if isinstance(exc, PermanentError):
        return "rejected"
    if isinstance(exc, OutcomeUnknown):
        return "unknown"
    return "retryable" if isinstance(exc, TransientError) else "bad_answer"


class Poller(LeasedLoop):
    """Asks providers for the state of submitted jobs: the only signal for providers without
    callbacks, and the safety net when a callback is overdue."""

    name = "poll"

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(gateway, concurrency=gateway.settings.poll_concurrency, **kwargs)
        self._caps = {name: asyncio.Semaphore(a.poll_concurrency) for name, a in gateway.adapters.items()}

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        return await self.store.claim_polls(now, limit, self.lease_seconds)

    async def handle(self, job: JobRecord) -> None:
        now = self.clock()
        adapter = self.gateway.adapters.get(job.provider)
        if adapter is None or job.provider_task_id is None:
            await self._fail(job, "provider_unavailable", f"provider {job.provider} is not configured")
            return
        if now >= job.deadline_at:
            await self._fail(job, "timeout", "the provider did not finish the job before its deadline")
            return
        report = None
        retry_after = None
        try:
            async with self._caps[job.provider]:
                report = await adapter.fetch(job.provider_task_id)
        except PermanentError as exc:
            await self._fail(job, "provider_error", exc.message, exc.provider_code)
            return
        except TransientError as exc:
            retry_after = exc.retry_after
            log.warning("poll.retrying", error=str(exc))
        except (ProviderError, ValueError, KeyError, TypeError) as exc:
            log.warning("poll.bad_answer", error=str(exc))
        delay = adapter.poll_schedule.delay(job.poll_attempts, self.rng, at_least=retry_after)

        def decide(current: JobRecord) -> tuple[JobRecord, str | None] | None:
            change = lifecycle.reported(current, report, now=now) if report is not None else None
            updated, event = change if change is not None else (current, None)
            if updated.stage == Stage.TERMINAL:
                return change
            return (
                msgspec.structs.replace(
                    updated,
                    next_poll_at=min(now + delay, updated.deadline_at),
                    poll_attempts=current.poll_attempts + 1,
                    lease_until=None,
                ),
                event,
            )

        await self._update(job, decide)
