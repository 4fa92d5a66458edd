"""The poller: asks providers for the state of submitted jobs. It is the only signal for providers without
callbacks, and the safety net when a callback is overdue."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
import structlog

from service import lifecycle
from service.errors import PermanentError, ProviderError, TransientError
from service.loops.leased import LeasedLoop
from storage import Decision, Declined, JobRecord, PollReschedule, Stage, StorageError

if TYPE_CHECKING:
    from service.gateway import Gateway
    from service.runtime import Runtime
    from storage import Store

log = structlog.get_logger("reelay.worker")


class Reschedules:
    """Status checks that changed nothing, written together (`Store.reschedule_polls`) instead of a transaction
    each. Ones lost to a crash cost a check, not a job: their leases run out and the jobs are polled again."""

    def __init__(self, store: Store, *, window: float, size: int) -> None:
        self._store = store
        self._window = window  # the longest an item waits for others
        self._size = size  # this many waiting are written at once
        self._items: list[PollReschedule] = []
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    def add(self, item: PollReschedule) -> None:
        self._items.append(item)
        if len(self._items) >= self._size:
            self._full.set()
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_soon())

    async def _write_soon(self) -> None:
        try:
            while self._items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._window)
                await self.flush()
        finally:
            self._writer = None

    async def close(self) -> None:
        """Write what is waiting, now."""
        writer = self._writer
        if writer is not None:
            self._full.set()  # no need to wait out the window
            await writer
        await self.flush()

    async def flush(self) -> None:
        """Write what is waiting now."""
        items, self._items = self._items, []
        self._full.clear()
        if not items:
            return
        try:
            await self._store.reschedule_polls(items)
        except StorageError as exc:
            log.error("poll.reschedule_failed", error=str(exc), jobs=len(items))


class Poller(LeasedLoop):
    """Asks providers for the state of submitted jobs: the only signal for providers without
    callbacks, and the safety net when a callback is overdue."""

    name = "poll"
    gather_seconds = 0.01  # while busy, a claim waits this long for more slots (see LeasedLoop.run)
    reschedule_window = 0.02  # seconds an unchanged poll's write waits to share a transaction with others
    reschedule_size = 256  # ... or until this many are waiting

    def __init__(self, runtime: Runtime, gateway: Gateway) -> None:
        super().__init__(runtime, gateway, wake=runtime.signals.confirm, concurrency=runtime.settings.poll_concurrency)
        self._caps = {name: asyncio.Semaphore(a.poll_concurrency) for name, a in runtime.adapters.items()}
        self._rates = runtime.rates
        self._budgeted = sorted(p for p in self._rates.shapes if p in runtime.adapters) if self._rates else []
        self._turn = 0
        # Status checks of budgeted providers claimed and not yet done: never more than the adapter's cap, so each
        # goes out as soon as its token is taken (a token held while waiting for a slot would arrive late).
        self._busy = dict.fromkeys(self._budgeted, 0)
        self._reschedules = Reschedules(self.store, window=self.reschedule_window, size=self.reschedule_size)

    async def drain(self, grace_seconds: float) -> None:
        await super().drain(grace_seconds)
        await self._reschedules.close()  # before the lifespan drops this worker's leases

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        if self._rates is None or not self._budgeted:
            return await self.store.claim_polls(now, limit, self.lease_seconds)
        # Providers without a budget as before; each one with a budget only as many as it has tokens for, taken
        # before the claim, in turns so that no provider waits behind another's backlog.
        jobs = await self.store.claim_polls(now, limit, self.lease_seconds, providers=self._budgeted, exclude=True)
        self._turn = (self._turn + 1) % len(self._budgeted)
        for provider in self._budgeted[self._turn :] + self._budgeted[: self._turn]:
            room = min(limit - len(jobs), self.runtime.adapters[provider].poll_concurrency - self._busy[provider])
            if room <= 0:
                continue
            granted, wait = await self._rates.take(provider, room, create=False)
            if not granted:
                self.soon = wait if self.soon is None else min(self.soon, wait)
                continue
            got = await self.store.claim_polls(now, granted, self.lease_seconds, providers=[provider])
            await self._rates.refund(provider, granted - len(got))
            self._busy[provider] += len(got)
            if len(got) == granted:
                self.soon = 0.0  # there may be more due: ask again as soon as there are tokens
            jobs += got
        return jobs

    async def handle(self, job: JobRecord) -> None:
        try:
            await self._poll(job)
        finally:
            if job.provider in self._busy:
                self._busy[job.provider] -= 1

    async def _poll(self, job: JobRecord) -> None:
        now = self.clock()
        adapter = self.runtime.adapters.get(job.provider)
        if adapter is None or job.provider_task_id is None:
            await self._fail(job, "provider_unavailable", f"provider {job.provider} is not configured")
            return
        if now >= job.deadline_at:
            await self._fail(job, "timeout", "the provider did not finish the job before its deadline")
            return
        report = None
        retry_after = None
        # A status check still waiting (for a slot or an answer) at the deadline is dropped: the job fails then.
        deadline = asyncio.timeout(max(job.deadline_at - now, 0.0))
        try:
            async with deadline, self._caps[job.provider]:
                report = await adapter.fetch(job.provider_task_id)
        except TimeoutError:
            if not deadline.expired():
                raise
            await self._fail(job, "timeout", "the provider did not finish the job before its deadline")
            return
        except PermanentError as exc:
            await self._fail(job, "provider_error", exc.message, exc.provider_code)
            return
        except TransientError as exc:
            retry_after = exc.retry_delay(self.clock())
            log.warning("poll.retrying", error=str(exc))
            if exc.status == 429 and retry_after and self._rates is not None:
                await self._rates.pause(job.provider, retry_after)  # for every job and replica, not only this one
        except (ProviderError, ValueError, KeyError, TypeError) as exc:
            log.warning("poll.bad_answer", error=str(exc))
        delay = await self.runtime.poll_delay(job.provider, job.poll_attempts, self.rng, at_least=retry_after)
        # A generation failure may move a job on a route to its next candidate (retry_failed).
        apply = None if report is None else await self.gateway.report_decision(job, report)
        if apply is None or apply(job) is None:
            # Nothing to change in the job as claimed: no transaction of its own; the store checks it is unchanged.
            self._reschedules.add(PollReschedule(job=job, next_poll_at=min(now + delay, job.deadline_at)))
            return

        def decide(current: JobRecord) -> Decision:
            if current.provider_task_id != job.provider_task_id:
                return None  # the job left the task polled (retry_failed) meanwhile: its answer is stale
            change = apply(current) if apply is not None else None
            if isinstance(change, Declined):
                return change
            updated, event = change if change is not None else (current, None)
            if updated.stage == Stage.TERMINAL or event == "job.rerouted":
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

    async def _fail(self, job: JobRecord, code: str, message: str, provider_code: str | None = None) -> None:
        """Fail the job, unless it left the task it was polled for meanwhile (retry_failed moved it on)."""
        now = self.clock()

        def decide(current: JobRecord) -> tuple[JobRecord, str | None] | None:
            if current.provider_task_id != job.provider_task_id:
                return None
            return lifecycle.failed(current, code=code, message=message, now=now, provider_code=provider_code)

        await self._update(job, decide)
