"""What a retention pass removes, and how: in batches of a transaction each, the same on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from storage.records import PruneCounts, Stage

PruneBatch = Callable[[], Awaitable[tuple[int, int]]]
"""Deletes up to one batch of rows in a transaction of its own: (rows deleted, dependent rows deleted)."""


def finished_before(cutoff: str) -> str:
    """SQL for the jobs a prune removes: finished before the time the placeholder `cutoff` binds."""
    # Literal `stage = 3` so the planner can use the partial index jobs_by_completion.
    return f"stage = {int(Stage.TERMINAL)} AND completed_at < {cutoff}"


async def prune_in_batches(
    batch_size: int, pause: float, *, keys: PruneBatch, receipts: PruneBatch, jobs: PruneBatch
) -> PruneCounts:
    """`Store.prune` around one backend's batch deletes: each runs again, after `pause`, while it fills a
    batch. Keys go before jobs, so that no key is left answering for a job that is gone."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    async def drain(batch: PruneBatch) -> tuple[int, int]:
        rows = dependents = 0
        while True:
            deleted, also = await batch()
            rows, dependents = rows + deleted, dependents + also
            if deleted < batch_size:
                return rows, dependents
            await asyncio.sleep(pause)

    key_count, _ = await drain(keys)
    receipt_count, _ = await drain(receipts)
    job_count, event_count = await drain(jobs)
    return PruneCounts(jobs=job_count, events=event_count, webhook_receipts=receipt_count, idempotency_keys=key_count)
