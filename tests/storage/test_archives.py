"""The archiver's queue on both backends: queued by the succeeded write itself (only when archiving is on), leased
once, saved between rounds, and closed in the transaction that updates the job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from storage import Stage, Store, create_store
from storage.base import Decision
from storage.records import JobRecord
from tests.storage.conftest import Backend
from tests.storage.factories import KEY_A, encode_snapshot, make_job

OUTPUT = {
    "videos": [{"url": "https://cdn.example/v.mp4", "thumbnail_url": "https://cdn.example/t.jpg"}, {"url": None}],
    "last_frame_url": "https://cdn.example/l.png",
}
ITEMS = [
    {"variant": "video", "index": 0, "url": "https://cdn.example/v.mp4"},
    {"variant": "thumbnail", "index": 0, "url": "https://cdn.example/t.jpg"},
    {"variant": "last_frame", "index": 0, "url": "https://cdn.example/l.png"},
]
NOW = 1_750_000_000.0


@pytest.fixture
async def archiving(backend: Backend) -> AsyncIterator[Store]:
    """An open store that queues succeeded jobs for the archiver, holding KEY_A."""
    opened = create_store(backend.url, encode_snapshot, clock=lambda: NOW, archive=True)
    await opened.open()
    await opened.create_api_key(KEY_A)
    yield opened
    await opened.close()


def ended(status: str, output: dict[str, Any] | None = OUTPUT) -> Any:
    def decide(job: JobRecord) -> Decision:
        return msgspec.structs.replace(job, status=status, stage=Stage.TERMINAL, output=output), f"job.{status}"

    return decide


async def test_a_succeeded_write_queues_its_result_urls_and_nothing_else_is_queued(archiving: Store) -> None:
    succeeded, failed, empty = make_job(), make_job(), make_job()
    for job in (succeeded, failed, empty):
        await archiving.create_job(job, "job.created")
    await archiving.update_job(succeeded.id, ended("succeeded"))
    await archiving.update_job(failed.id, ended("failed"))
    await archiving.update_job(empty.id, ended("succeeded", {"videos": [], "last_frame_url": None}))
    [claimed] = await archiving.claim_archives(NOW, 10, 60)
    assert (claimed.job_id, claimed.items, claimed.attempts, claimed.succeeded_at) == (succeeded.id, ITEMS, 0, NOW)


async def test_a_store_without_archiving_queues_nothing(store: Store) -> None:
    job = make_job()
    await store.create_job(job, "job.created")
    await store.update_job(job.id, ended("succeeded"))
    assert await store.claim_archives(NOW, 10, 60) == []


async def test_a_claimed_archive_waits_for_its_lease_or_its_release(archiving: Store) -> None:
    job = make_job()
    await archiving.create_job(job, "job.created")
    await archiving.update_job(job.id, ended("succeeded"))
    assert len(await archiving.claim_archives(NOW, 10, 60)) == 1
    assert await archiving.claim_archives(NOW + 59, 10, 60) == []
    await archiving.renew_archive(job.id, NOW + 120)
    assert await archiving.claim_archives(NOW + 61, 10, 60) == []  # renewed: still held
    await archiving.release_leases()
    assert len(await archiving.claim_archives(NOW + 61, 10, 60)) == 1


async def test_a_saved_archive_keeps_its_results_and_comes_back_when_due(archiving: Store) -> None:
    job = make_job()
    await archiving.create_job(job, "job.created")
    await archiving.update_job(job.id, ended("succeeded"))
    assert len(await archiving.claim_archives(NOW, 10, 60)) == 1
    items = [{**ITEMS[0], "key": f"{job.id}/video-0", "bytes": 3}, {**ITEMS[1], "last_error": "503"}, ITEMS[2]]
    await archiving.save_archive(job.id, items, NOW + 30)
    assert await archiving.claim_archives(NOW + 29, 10, 60) == []
    [again] = await archiving.claim_archives(NOW + 30, 10, 60)
    assert (again.items, again.attempts) == (items, 1)


async def test_finish_archive_updates_the_job_and_closes_the_archive_in_one_transaction(archiving: Store) -> None:
    job = make_job()
    await archiving.create_job(job, "job.created")
    await archiving.update_job(job.id, ended("succeeded"))
    await archiving.claim_archives(NOW, 10, 60)

    def broken(current: JobRecord) -> Decision:
        raise RuntimeError("the decision failed")

    with pytest.raises(RuntimeError):
        await archiving.finish_archive(job.id, broken, ITEMS)
    await archiving.release_leases()
    assert len(await archiving.claim_archives(NOW, 10, 60)) == 1  # nothing was closed

    def archived(current: JobRecord) -> Decision:
        output = {**(current.output or {}), "assets": []}
        return msgspec.structs.replace(current, output=output), "job.archived"

    outcome = await archiving.finish_archive(job.id, archived, ITEMS)
    assert outcome.event is not None
    assert outcome.event.type == "job.archived"
    assert (await archiving.get_job(job.id)) == outcome.job
    await archiving.release_leases()
    assert await archiving.claim_archives(NOW + 1e6, 10, 60) == []  # done for good
