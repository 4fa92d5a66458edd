"""What a retention pass removes, and how: in batches of a transaction each, the same on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from storage.records import PruneCounts, Stage

PruneBatch = Callable[[], Awaitable[tuple[int, PruneCounts]]]
"""Deletes up to one batch of rows in a transaction of its own: (rows the batch took, what it removed)."""

BeforeJobsPruned = Callable[[list[str]], Awaitable[None]]
"""Called with a batch's job ids before their rows are deleted (their archived assets go first, so a crash between
the two leaves jobs that the next prune finds again, never files that no job names)."""


def with_assets_before(cutoff: str, after: tuple[str, str], json_type: str) -> str:
    """SQL for the succeeded jobs completed before `cutoff` whose output names archived assets not yet expired,
    after the (completed_at, id) placeholders `after`; `json_type` is the backend's JSON type function of a path."""
    return (
        f"stage = {int(Stage.TERMINAL)} AND completed_at < {cutoff} AND (completed_at, id) > ({after[0]}, {after[1]}) "
        f"AND status = 'succeeded' AND {json_type.format(path='assets')} = 'array' "
        f"AND {json_type.format(path='assets_expired_at')} IS NULL"
    )


"""Deletes up to one batch of rows in a transaction of its own: (rows the batch took, what it removed)."""


def finished_before(cutoff: str) -> str:
    """SQL for the jobs a prune removes: finished before the time the placeholder `cutoff` binds."""
    # Literal `stage = 3` so the planner can use the partial index jobs_by_completion.
    return f"stage = {int(Stage.TERMINAL)} AND completed_at < {cutoff}"


KEY_EVENTS_BEFORE = "job_id = '' AND created_at < {cutoff}"
"""SQL for the events of a key alone (budget.threshold) a prune removes: logged before `cutoff`."""


async def prune_in_batches(
    batch_size: int, pause: float, *, keys: PruneBatch, receipts: PruneBatch, jobs: PruneBatch, tests: PruneBatch
) -> PruneCounts:
    """`Store.prune` around one backend's batch deletes: each runs again, after `pause`, while it fills a
    batch. Keys go before jobs, so that no key is left answering for a job that is gone; `tests` removes old
    `webhook.test` deliveries (the other deliveries go with their jobs)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")

    async def drain(batch: PruneBatch) -> PruneCounts:
        total = PruneCounts()
        while True:
            rows, counts = await batch()
            total = added(total, counts)
            if rows < batch_size:
                return total
            await asyncio.sleep(pause)

    total = PruneCounts()
    for batch in (keys, receipts, jobs, tests):
        total = added(total, await drain(batch))
    return total


def added(a: PruneCounts, b: PruneCounts) -> PruneCounts:
    return PruneCounts(**{f: getattr(a, f) + getattr(b, f) for f in PruneCounts.__struct_fields__})
