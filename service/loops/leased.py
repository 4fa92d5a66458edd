"""The loop both workers share: claim due jobs with a lease, handle each in its own task under a concurrency cap.

Every outcome is written back through the job state machine (`Gateway.update_job`). Only the loops read the
clock; the schedules they use are pure functions of an attempt number and a random source.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from service import lifecycle
from service.loops.base import finish_within
from storage import JobRecord, StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.gateway import Gateway
    from service.runtime import Runtime

log = structlog.get_logger("reelay.worker")


class LeasedLoop:
    """Claims due jobs and runs `handle` for each, at most `concurrency` at a time; `wake` cuts an idle wait short."""

    name = "loop"
    idle_seconds = 0.5  # how long an idle loop waits for `wake` before it looks for due jobs again
    gather_seconds = 0.0  # when busy, how long to let more slots free up so that one claim leases several jobs

    def __init__(self, runtime: Runtime, gateway: Gateway, *, wake: asyncio.Event, concurrency: int) -> None:
        self.runtime = runtime
        self.gateway = gateway
        self.store = runtime.store
        self.clock = runtime.clock
        self.rng = runtime.rng
        self.lease_seconds = runtime.settings.lease_seconds
        self.concurrency = concurrency
        self._wake = wake
        self.soon: float | None = None  # set by `claim`: look again this soon even if idle (a rate budget refills)
        self._inflight: set[asyncio.Task[None]] = set()

    async def claim(self, now: float, limit: int) -> list[JobRecord]:
        raise NotImplementedError

    async def handle(self, job: JobRecord) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            free = self.concurrency - len(self._inflight)
            if 0 < free <= self.concurrency // 2 and self.gather_seconds:
                # A claim is a write transaction: a few slots at a time, it would cost one per job.
                await asyncio.sleep(self.gather_seconds)
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
            idle = self.idle_seconds if self.soon is None else min(self.idle_seconds, self.soon)
            self.soon = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)

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
        await finish_within(self._inflight, grace_seconds, self.name)

    async def _update(self, job: JobRecord, decide: Callable[[JobRecord], Any]) -> JobRecord:
        return (await self.gateway.update_job(job.id, decide)).job

    async def _fail(self, job: JobRecord, code: str, message: str, provider_code: str | None = None) -> None:
        now = self.clock()
        await self._update(
            job, lambda j: lifecycle.failed(j, code=code, message=message, now=now, provider_code=provider_code)
        )
