"""What `reelay prune` does to archived assets: a pruned job's go before its rows, and with
REELAY_ASSET_RETENTION_DAYS an old job's go while the job stays, marked `output.assets_expired_at`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec

from storage import JobNotFound

if TYPE_CHECKING:
    from service.assets import AssetStore
    from storage import JobRecord, Store
    from storage.base import Decision
    from storage.retention import BeforeJobsPruned

DELETES_AT_ONCE = 16  # jobs whose assets are deleted concurrently (an S3 delete is a round trip or two)


def deleting_assets(assets: AssetStore) -> BeforeJobsPruned:
    """`Store.prune`'s hook: every asset of each job of a batch is deleted before the batch's rows."""

    async def delete(job_ids: list[str]) -> None:
        for start in range(0, len(job_ids), DELETES_AT_ONCE):
            await asyncio.gather(*(assets.delete_job(job_id) for job_id in job_ids[start : start + DELETES_AT_ONCE]))

    return delete


async def expire_assets(
    store: Store, assets: AssetStore | None, before: str, *, at: str, delete: bool = True, batch_size: int = 500
) -> int:
    """Delete the archived assets of succeeded jobs completed before `before` (ISO-8601 UTC), keeping the jobs, and
    mark each job's output `assets_expired_at: at` (no event: nothing happened to the job). Returns how many jobs;
    with `delete` false, only counts them.

    The files go first: a crash before the mark leaves a job the next prune finds again (its content answers 404
    meanwhile), never a mark over files that stay forever.
    """
    count = 0
    after = ("", "")
    while found := await store.jobs_with_assets(before, after=after, limit=batch_size):
        count += len(found)
        if delete and assets is not None:
            job_ids = [job_id for _, job_id in found]
            await deleting_assets(assets)(job_ids)
            for job_id in job_ids:
                with contextlib.suppress(JobNotFound):  # pruned meanwhile, with its assets
                    await store.update_job(job_id, lambda job: _mark_expired(job, at))
        if len(found) < batch_size:
            break
        after = found[-1]
    return count


def _mark_expired(job: JobRecord, at: str) -> Decision:
    if not job.output or job.output.get("assets_expired_at"):
        return None
    return msgspec.structs.replace(job, output={**job.output, "assets_expired_at": at}), None
