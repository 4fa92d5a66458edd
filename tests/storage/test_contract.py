"""The storage contract: every backend must pass this suite unchanged (see BACKENDS in conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from decimal import Decimal

import msgspec
import pytest

from storage import (
    ApiKeyRecord,
    ArchiveRecord,
    AttemptRecord,
    BudgetTotals,
    CreateOutcome,
    Declined,
    DeliveryRecord,
    DispatchState,
    EndpointRecord,
    EventRecord,
    IdempotencyClaim,
    IdempotencyConflict,
    JobFilter,
    JobNotFound,
    JobRecord,
    PollReschedule,
    PruneCounts,
    QueryRejected,
    Receipt,
    SchemaOutdated,
    SigningSecret,
    Stage,
    StorageUnavailable,
    Store,
    TaskTaken,
    migrations,
)
from storage.base import Decide, Decision
from storage.health import ProviderHealthRecord
from tests.storage.conftest import Backend
from tests.storage.factories import KEY_A, KEY_B, encode_snapshot, make_job

replace = msgspec.structs.replace
CLAIM = IdempotencyClaim(key="idem-1", request_hash="sha256:aaaa")
RECEIPT = Receipt(provider="seedancee2", key="evt_1")


def field_names(struct: type[msgspec.Struct]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(struct)}


def to_status(status: str, event_type: str | None = "job.updated") -> Decide:
    """A decide function that moves a job to `status`."""

    def decide(job: JobRecord) -> Decision:
        return replace(job, status=status, updated_at="2025-06-01T12:00:01.000Z"), event_type

    return decide


class Recorder:
    """A listener that keeps every call it gets."""

    def __init__(self) -> None:
        self.calls: list[list[EventRecord]] = []

    def __call__(self, events: Sequence[EventRecord]) -> None:
        self.calls.append(list(events))


async def create(store: Store, *, inline: dict[str, str] | None = None, **changes: object) -> JobRecord:
    job = make_job(**changes)
    await store.create_job(job, "job.created", inline=inline)
    return job


# -- lifecycle and schema ----------------------------------------------------------------------


async def test_open_applies_every_migration(backend: Backend) -> None:
    store = backend.new_store()
    await store.open()
    await store.close()
    rows = await backend.execute("SELECT name FROM schema_migrations ORDER BY version")
    assert [name for (name,) in rows] == [name for _, name, _ in migrations.load(backend.name)]


async def test_open_twice_keeps_the_store_working(store: Store) -> None:
    await store.open()
    assert await store.get_api_key(KEY_A.id) == KEY_A


async def test_migrate_on_a_current_schema_applies_nothing(store: Store) -> None:
    assert await store.migrate() == []


async def test_migrating_from_scratch_gives_the_current_schema(backend: Backend, store: Store) -> None:
    expected = {
        "schema_migrations": {"version", "name", "applied_at"},
        "api_keys": field_names(ApiKeyRecord),
        "jobs": field_names(JobRecord),
        "events": field_names(EventRecord) - {"deliveries"},  # counted when logged, not stored
        "webhook_receipts": {"provider", "receipt_key", "received_at"},
        "idempotency_keys": {"api_key_id", "key", "request_hash", "job_id", "created_at"},
        "job_inline": {"job_id", "data_uris"},
        "webhook_secrets": {"api_key_id"} | field_names(SigningSecret),
        "webhook_endpoints": field_names(EndpointRecord) - {"signing"} | field_names(SigningSecret),
        "webhook_deliveries": field_names(DeliveryRecord) | {"lease_until"},
        "webhook_attempts": {"id"} | field_names(AttemptRecord),
        "provider_health": field_names(ProviderHealthRecord),
        "budget_periods": field_names(BudgetTotals),
        "server_secrets": {"name", "value"},
        "asset_archives": field_names(ArchiveRecord) | {"state", "lease_owner"},
        "job_metadata": {"api_key_id", "key", "value", "job_id"},
    }
    for table, columns in backend.private_columns.items():
        expected[table] = expected.get(table, set()) | columns
    assert await backend.tables() == expected
    assert await backend.indexes() == {
        "jobs_by_key",
        "jobs_to_dispatch",
        "jobs_to_poll",
        "jobs_by_provider_task",
        "events_by_key",
        "events_by_job",
        "jobs_by_completion",
        "webhook_receipts_by_time",
        "idempotency_keys_by_time",
        "webhook_endpoints_by_key",
        "webhook_deliveries_due",
        "webhook_deliveries_by_job",
        "webhook_deliveries_by_endpoint",
        "webhook_deliveries_tests",
        "webhook_attempts_by_delivery",
        "jobs_in_flight",
        "jobs_poll_by_provider",
        "asset_archives_due",
        "job_metadata_by_job",
        "jobs_by_key_status",
    }


async def test_the_metadata_index_migration_indexes_the_jobs_stored_before_it(backend: Backend, store: Store) -> None:
    before = await create(store, metadata={"team": "video", "env": "prod"})
    await store.close()
    # The database as it was before the migration: no index table, the migration not applied.
    name = {"sqlite": "0011_list_filters", "postgresql": "0013_list_filters"}[backend.name]
    await backend.execute("DROP TABLE job_metadata")
    await backend.execute("DROP INDEX jobs_by_key_status")
    await backend.execute(
        "DELETE FROM schema_migrations WHERE name = $1"
        if backend.name == "postgresql"
        else "DELETE FROM schema_migrations WHERE name = ?",
        (name,),
    )
    reopened = backend.new_store()
    await reopened.open()
    try:
        for pair, found in (({"team": "video"}, [before]), ({"env": "prod"}, [before]), ({"team": "audio"}, [])):
            assert await reopened.list_jobs(KEY_A.id, JobFilter(metadata=pair), limit=5) == found
    finally:
        await reopened.close()


async def test_check_passes_on_a_current_schema(store: Store) -> None:
    await store.check()


async def test_check_reports_a_missing_migration(backend: Backend, store: Store) -> None:
    await backend.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)")
    with pytest.raises(SchemaOutdated):
        await store.check()


async def test_check_on_a_closed_store_is_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StorageUnavailable):
        await store.check()


def with_broken_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the newest migration create a table and then fail."""
    real = migrations.load

    def load(backend: str) -> list[tuple[int, str, str]]:
        return [*real(backend), (9999, "9999_broken", "CREATE TABLE broken_marker (x INTEGER);\nNOT SQL AT ALL;")]

    monkeypatch.setattr(migrations, "load", load)


async def test_a_failed_migration_leaves_no_trace(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = backend.new_store()
    with_broken_migration(monkeypatch)
    with pytest.raises(StorageUnavailable):
        await store.open()
    await store.close()
    assert "broken_marker" not in await backend.tables()
    assert await backend.execute("SELECT name FROM schema_migrations WHERE version = 9999") == []


async def test_open_can_be_retried_after_a_failed_migration(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = backend.new_store()
    with_broken_migration(monkeypatch)
    with pytest.raises(StorageUnavailable):
        await store.open()
    monkeypatch.undo()
    await store.open()
    try:
        await store.check()
        await store.create_api_key(KEY_A)
        assert await store.get_api_key(KEY_A.id) == KEY_A
    finally:
        await store.close()


async def test_a_failed_migrate_leaves_the_store_writable(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with_broken_migration(monkeypatch)
    with pytest.raises(StorageUnavailable):
        await store.migrate()
    job = await create(store)
    assert await store.get_job(job.id) == job


# -- API keys ----------------------------------------------------------------------------------


async def test_api_key_round_trips(store: Store) -> None:
    assert await store.get_api_key(KEY_B.id) == KEY_B


async def test_unknown_api_key_is_none(store: Store) -> None:
    assert await store.get_api_key("key_missing") is None


async def test_api_keys_are_listed_oldest_first(store: Store) -> None:
    older = ApiKeyRecord(id="key_c", name="older", secret_hash=b"h", created_at="2025-05-01T00:00:00.000Z")
    await store.create_api_key(older)
    assert await store.list_api_keys() == [older, KEY_A, KEY_B]


async def test_revoking_a_key_records_when(store: Store) -> None:
    assert await store.revoke_api_key(KEY_A.id, "2025-06-02T00:00:00.000Z") is True
    assert await store.get_api_key(KEY_A.id) == replace(KEY_A, revoked_at="2025-06-02T00:00:00.000Z")


async def test_revoking_a_key_twice_returns_false_and_keeps_the_first_time(store: Store) -> None:
    await store.revoke_api_key(KEY_A.id, "2025-06-02T00:00:00.000Z")
    assert await store.revoke_api_key(KEY_A.id, "2025-06-03T00:00:00.000Z") is False
    revoked = await store.get_api_key(KEY_A.id)
    assert revoked is not None
    assert revoked.revoked_at == "2025-06-02T00:00:00.000Z"


async def test_revoking_an_unknown_key_returns_false(store: Store) -> None:
    assert await store.revoke_api_key("key_missing", "2025-06-02T00:00:00.000Z") is False


# -- creating jobs -----------------------------------------------------------------------------


async def test_create_job_stores_the_job(store: Store) -> None:
    job = make_job(metadata={"team": "video"}, cost={"credits_estimate": 12})
    outcome = await store.create_job(job, "job.created")
    assert outcome.created is True
    assert outcome.job == job
    assert await store.get_job(job.id) == job


async def test_create_job_logs_its_first_event(store: Store) -> None:
    job = make_job()
    outcome = await store.create_job(job, "job.created")
    assert outcome.event is not None
    assert (outcome.event.type, outcome.event.job_id, outcome.event.api_key_id) == ("job.created", job.id, KEY_A.id)
    assert outcome.event.job == encode_snapshot(job)
    assert await store.events_after(0) == [outcome.event]


async def test_create_job_stores_nothing_when_its_event_cannot_be_made(backend: Backend) -> None:
    def failing_encoder(job: JobRecord) -> bytes:
        raise ValueError("cannot encode")

    store = backend.new_store(failing_encoder)
    await store.open()
    try:
        await store.create_api_key(KEY_A)
        job = make_job()
        with pytest.raises(ValueError, match="cannot encode"):
            await store.create_job(job, "job.created")
        assert await store.get_job(job.id) is None
        assert await store.last_event_id() == 0
    finally:
        await store.close()


async def test_a_repeated_idempotency_claim_returns_the_original_job(store: Store) -> None:
    original = make_job()
    await store.create_job(original, "job.created", idempotency=CLAIM)
    last = await store.last_event_id()
    retry = make_job()
    outcome = await store.create_job(retry, "job.created", idempotency=CLAIM)
    assert (outcome.created, outcome.job, outcome.event) == (False, original, None)
    assert await store.get_job(retry.id) is None
    assert await store.last_event_id() == last


async def test_an_idempotency_key_reused_for_another_request_conflicts(store: Store) -> None:
    original = make_job()
    await store.create_job(original, "job.created", idempotency=CLAIM)
    last = await store.last_event_id()
    other = make_job()
    with pytest.raises(IdempotencyConflict) as raised:
        await store.create_job(other, "job.created", idempotency=replace(CLAIM, request_hash="sha256:bbbb"))
    assert raised.value.job_id == original.id
    assert await store.get_job(other.id) is None
    assert await store.last_event_id() == last


async def test_idempotency_keys_belong_to_one_api_key(store: Store) -> None:
    await store.create_job(make_job(), "job.created", idempotency=CLAIM)
    other_key_job = make_job(api_key_id=KEY_B.id)
    outcome = await store.create_job(other_key_job, "job.created", idempotency=replace(CLAIM, request_hash="x"))
    assert outcome.created is True
    assert await store.get_job(other_key_job.id) == other_key_job


# -- reading jobs ------------------------------------------------------------------------------


async def test_unknown_job_is_none(store: Store) -> None:
    assert await store.get_job("job_missing") is None


async def test_find_job_by_task_finds_the_job_given_that_task(store: Store) -> None:
    job = await create(store)
    outcome = await store.update_job(job.id, lambda j: (replace(j, provider_task_id="task-1"), None))
    assert await store.find_job_by_task(job.provider, "task-1") == outcome.job


async def test_find_job_by_task_needs_the_same_provider(store: Store) -> None:
    await create(store, provider="seedancee2", provider_task_id="task-1")
    assert await store.find_job_by_task("fal", "task-1") is None
    assert await store.find_job_by_task("seedancee2", "task-2") is None


async def test_list_jobs_is_newest_first_and_only_the_keys_own(store: Store) -> None:
    first = await create(store)
    await create(store, api_key_id=KEY_B.id)
    second = await create(store)
    third = await create(store)
    listed = await store.list_jobs(KEY_A.id, JobFilter(), limit=10)
    assert [j.id for j in listed] == [third.id, second.id, first.id]


async def test_list_jobs_stops_at_limit(store: Store) -> None:
    jobs = [await create(store) for _ in range(4)]
    listed = await store.list_jobs(KEY_A.id, JobFilter(), limit=2)
    assert [j.id for j in listed] == [jobs[3].id, jobs[2].id]


@pytest.mark.parametrize(
    ("field", "value"), [("status", "failed"), ("model", "seedance-2.0-fast"), ("provider", "fal")]
)
async def test_list_jobs_filters_by_column(store: Store, field: str, value: str) -> None:
    wanted = await create(store, **{field: value})
    await create(store)
    listed = await store.list_jobs(KEY_A.id, msgspec.convert({field: value}, JobFilter), limit=10)
    assert listed == [wanted]


async def test_list_jobs_filters_by_every_metadata_pair(store: Store) -> None:
    wanted = await create(store, metadata={"team": "video", "env": "prod"})
    await create(store, metadata={"team": "video", "env": "dev"})
    await create(store, metadata={"env": "prod"})
    listed = await store.list_jobs(KEY_A.id, JobFilter(metadata={"team": "video", "env": "prod"}), limit=10)
    assert listed == [wanted]


async def test_a_metadata_filter_pages_newest_first_within_the_key_and_the_other_filters(store: Store) -> None:
    matching = [await create(store, metadata={"team": "video", "n": str(i)}) for i in range(5)]
    await create(store, metadata={"team": "audio"})
    await create(store, api_key_id=KEY_B.id, metadata={"team": "video"})
    failed = await create(store, metadata={"team": "video"}, status="failed")
    video = JobFilter(metadata={"team": "video"})
    first = await store.list_jobs(KEY_A.id, video, limit=3)
    assert first == [failed, *matching[::-1][:2]]
    rest = await store.list_jobs(KEY_A.id, video, limit=10, before_id=first[-1].id)
    assert rest == matching[::-1][2:]
    assert await store.list_jobs(KEY_A.id, JobFilter(status="failed", metadata={"team": "video"}), limit=5) == [failed]
    assert await store.list_jobs(KEY_B.id, video, limit=5) != []


@pytest.mark.parametrize("key", ['say "hi"', "a.b", "$.a", "a[0]", "back\\slash", "new\nline", "*"])
async def test_metadata_filter_keys_are_taken_literally(store: Store, key: str) -> None:
    wanted = await create(store, metadata={key: "1"})
    await create(store, metadata={key: "2"})
    await create(store, metadata={"a": "1", "b": "1"})
    listed = await store.list_jobs(KEY_A.id, JobFilter(metadata={key: "1"}), limit=10)
    assert listed == [wanted]


@pytest.mark.parametrize(
    "filters",
    [
        pytest.param(JobFilter(metadata={f"k{i}": "v" for i in range(1000)}), id="1000-metadata-pairs"),
        pytest.param(JobFilter(model="a\x00b"), id="nul-in-a-column-value"),
        pytest.param(JobFilter(metadata={"k": "a\x00b"}), id="nul-in-a-metadata-value"),
        pytest.param(JobFilter(metadata={"k\x00": "b"}), id="nul-in-a-metadata-key"),
        pytest.param(JobFilter(provider="\ud800"), id="lone-surrogate"),
    ],
)
async def test_a_filter_the_database_cannot_take_finds_nothing_or_is_rejected_never_unavailable(
    store: Store, filters: JobFilter
) -> None:
    # The caller's input, not an outage: a store that answered StorageUnavailable here would make the API say 503.
    await create(store, metadata={"k": "v"})
    try:
        listed = await store.list_jobs(KEY_A.id, filters, limit=10)
    except QueryRejected:
        pass
    else:
        assert listed == []
    await store.check()  # and the store is still ready


async def test_paging_with_before_id_returns_every_job_once(store: Store) -> None:
    jobs = [await create(store) for _ in range(7)]
    seen: list[str] = []
    before: str | None = None
    while page := await store.list_jobs(KEY_A.id, JobFilter(), limit=3, before_id=before):
        seen.extend(j.id for j in page)
        before = page[-1].id
    assert seen == [j.id for j in reversed(jobs)]


# -- updating jobs -----------------------------------------------------------------------------


async def test_a_decision_of_none_changes_nothing(store: Store) -> None:
    job = await create(store)
    last = await store.last_event_id()
    outcome = await store.update_job(job.id, lambda j: None)
    assert (outcome.job, outcome.event, outcome.changed, outcome.duplicate) == (job, None, False, False)
    assert await store.get_job(job.id) == job
    assert await store.last_event_id() == last


async def test_a_decision_writes_every_mutable_field(store: Store) -> None:
    job = await create(store)
    decided = replace(
        job,
        status="succeeded",
        stage=Stage.TERMINAL,
        provider_task_id="task-9",
        output={"video_url": "https://cdn.example/v.mp4"},
        error={"code": "none"},
        cost={"credits_estimate": 10, "credits_charged": 9.5},
        updated_at="2025-06-01T12:05:00.000Z",
        completed_at="2025-06-01T12:05:00.000Z",
        deadline_at=1_750_009_999.5,
        dispatch_state=DispatchState.DONE,
        dispatch_attempts=2,
        next_attempt_at=1_750_000_100.0,
        next_poll_at=1_750_000_200.0,
        poll_attempts=3,
        lease_until=1_750_000_300.0,
    )
    outcome = await store.update_job(job.id, lambda j: (decided, "job.succeeded"))
    assert (outcome.job, outcome.changed) == (decided, True)
    assert await store.get_job(job.id) == decided


async def test_a_decision_logs_its_event(store: Store) -> None:
    job = await create(store)
    last = await store.last_event_id()
    outcome = await store.update_job(job.id, to_status("processing", "job.processing"))
    assert outcome.event is not None
    assert (outcome.event.type, outcome.event.job_id) == ("job.processing", job.id)
    assert outcome.event.job == encode_snapshot(outcome.job)
    assert await store.events_after(last) == [outcome.event]


async def test_a_decision_without_event_type_writes_without_logging(store: Store) -> None:
    job = await create(store)
    last = await store.last_event_id()
    outcome = await store.update_job(job.id, to_status("processing", None))
    assert (outcome.changed, outcome.event) == (True, None)
    assert await store.get_job(job.id) == outcome.job
    assert await store.last_event_id() == last


async def test_concurrent_updates_are_not_lost(store: Store) -> None:
    job = await create(store)

    def one_more_poll(j: JobRecord) -> Decision:
        return replace(j, poll_attempts=j.poll_attempts + 1), None

    await asyncio.gather(*(store.update_job(job.id, one_more_poll) for _ in range(50)))
    updated = await store.get_job(job.id)
    assert updated is not None
    assert updated.poll_attempts == 50


async def test_a_redelivered_receipt_is_a_duplicate_and_changes_nothing(store: Store) -> None:
    job = await create(store)
    first = await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    last = await store.last_event_id()
    decided: list[JobRecord] = []

    def decide(j: JobRecord) -> Decision:
        decided.append(j)
        return replace(j, status="failed"), "job.failed"

    again = await store.update_job(job.id, decide, receipt=RECEIPT)
    assert (again.duplicate, again.changed, again.event, again.job) == (True, False, None, first.job)
    assert decided == []
    assert await store.get_job(job.id) == first.job
    assert await store.last_event_id() == last


async def test_receipts_of_different_providers_are_distinct(store: Store) -> None:
    job = await create(store)
    await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    outcome = await store.update_job(job.id, to_status("succeeded"), receipt=replace(RECEIPT, provider="fal"))
    assert (outcome.duplicate, outcome.changed) == (False, True)


async def test_an_error_in_decide_propagates_and_records_no_receipt(store: Store) -> None:
    job = await create(store)
    last = await store.last_event_id()

    def broken(j: JobRecord) -> Decision:
        raise RuntimeError("bug in decide")

    with pytest.raises(RuntimeError, match="bug in decide"):
        await store.update_job(job.id, broken, receipt=RECEIPT)
    assert await store.get_job(job.id) == job
    assert await store.last_event_id() == last
    retried = await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    assert (retried.duplicate, retried.changed) == (False, True)


async def test_a_declined_decision_changes_nothing_keeps_no_receipt_and_says_why(store: Store) -> None:
    job = await create(store)
    last = await store.last_event_id()
    outcome = await store.update_job(job.id, lambda j: Declined("unconfirmed"), receipt=RECEIPT)
    assert (outcome.job, outcome.event, outcome.changed, outcome.duplicate) == (job, None, False, False)
    assert outcome.declined == "unconfirmed"
    assert await store.get_job(job.id) == job
    assert await store.last_event_id() == last
    # The delivery was not taken: when it comes again, it is decided afresh.
    again = await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    assert (again.duplicate, again.changed, again.declined) == (False, True, None)


async def test_naming_a_task_another_job_holds_raises_task_taken_and_writes_nothing(store: Store) -> None:
    owner = await create(store, provider_task_id="task-1")
    other = await create(store)
    last = await store.last_event_id()

    def take_task(j: JobRecord) -> Decision:
        return replace(j, provider_task_id="task-1", status="succeeded"), "job.succeeded"

    with pytest.raises(TaskTaken) as raised:
        await store.update_job(other.id, take_task, receipt=RECEIPT)
    assert (raised.value.provider, raised.value.provider_task_id, raised.value.owner_job_id) == (
        "seedancee2",
        "task-1",
        owner.id,
    )
    assert await store.get_job(other.id) == other
    assert await store.find_job_by_task("seedancee2", "task-1") == owner
    assert await store.last_event_id() == last
    # Its receipt was not recorded either: the delivery meant for the holder still applies.
    outcome = await store.update_job(owner.id, to_status("succeeded"), receipt=RECEIPT)
    assert (outcome.duplicate, outcome.changed) == (False, True)


async def test_updating_an_unknown_job_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await store.update_job("job_missing", to_status("processing"))


# -- listeners ---------------------------------------------------------------------------------


async def test_listeners_get_the_events_of_each_commit(store: Store) -> None:
    recorder, other = Recorder(), Recorder()
    store.add_listener(recorder)
    store.add_listener(other)
    created = await store.create_job(make_job(), "job.created")
    updated = await store.update_job(created.job.id, to_status("processing"))
    assert recorder.calls == [[created.event], [updated.event]]
    assert other.calls == recorder.calls


async def test_listeners_are_not_called_for_writes_without_events(store: Store) -> None:
    job = await create(store, next_attempt_at=1.0)
    recorder = Recorder()
    store.add_listener(recorder)
    await store.create_api_key(replace(KEY_A, id="key_c"))
    await store.update_job(job.id, lambda j: None)
    await store.update_job(job.id, to_status("processing", None))
    await store.claim_dispatch(now=2.0, limit=10, lease_seconds=30)
    assert recorder.calls == []


async def test_listeners_are_not_called_for_rolled_back_writes(store: Store) -> None:
    job = await store.create_job(make_job(), "job.created", idempotency=CLAIM)
    recorder = Recorder()
    store.add_listener(recorder)
    with pytest.raises(IdempotencyConflict):
        await store.create_job(make_job(), "job.created", idempotency=replace(CLAIM, request_hash="other"))

    def broken(j: JobRecord) -> Decision:
        raise RuntimeError("bug in decide")

    with pytest.raises(RuntimeError):
        await store.update_job(job.job.id, broken)
    assert recorder.calls == []


async def test_a_failing_write_among_concurrent_ones_undoes_only_itself(store: Store) -> None:
    """SQLite commits concurrent writes together; one that raises must not take the others with it."""
    jobs = [await create(store) for _ in range(6)]
    start = await store.last_event_id()
    recorder = Recorder()
    store.add_listener(recorder)

    def broken(j: JobRecord) -> Decision:
        raise RuntimeError("bug in decide")

    writes: list[Awaitable[object]] = [
        store.update_job(job.id, broken if i % 2 else to_status("processing")) for i, job in enumerate(jobs)
    ]
    writes.append(store.create_job(make_job(), "job.created", idempotency=CLAIM))
    writes.append(store.create_job(make_job(), "job.created", idempotency=replace(CLAIM, request_hash="other")))
    outcomes = await asyncio.gather(*writes, return_exceptions=True)

    assert [type(o).__name__ for o in outcomes[:6]] == ["UpdateOutcome", "RuntimeError"] * 3
    # The same idempotency key with two bodies: whichever commits first wins, the other conflicts.
    created = [o for o in outcomes[6:] if isinstance(o, CreateOutcome)]
    assert len(created) == 1
    assert sum(isinstance(o, IdempotencyConflict) for o in outcomes[6:]) == 1
    for i, job in enumerate(jobs):
        stored = await store.get_job(job.id)
        assert stored is not None
        assert stored.status == ("queued" if i % 2 else "processing")
    logged = await store.events_after(start, limit=100)
    assert sorted(e.job_id for e in logged) == sorted([jobs[0].id, jobs[2].id, jobs[4].id, created[0].job.id])
    assert [e.id for call in recorder.calls for e in call] == [e.id for e in logged]


async def test_close_finishes_the_writes_already_queued(store: Store) -> None:
    jobs = [await create(store) for _ in range(20)]
    writes = [asyncio.ensure_future(store.update_job(job.id, to_status("processing"))) for job in jobs]
    await asyncio.sleep(0)  # every write has started; most wait behind the first batch
    await store.close()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["UpdateOutcome"] * len(jobs)
    await store.open()  # the fixture closes it again
    for job in jobs:
        stored = await store.get_job(job.id)
        assert stored is not None
        assert stored.status == "processing"


async def test_listeners_see_commit_order_under_concurrent_writers(store: Store) -> None:
    existing = [await create(store) for _ in range(25)]
    start = await store.last_event_id()
    recorder = Recorder()
    store.add_listener(recorder)
    writes: list[Awaitable[object]] = []
    for job in existing:
        writes.append(store.create_job(make_job(), "job.created"))
        writes.append(store.update_job(job.id, to_status("processing")))
    await asyncio.gather(*writes)
    announced = [event.id for call in recorder.calls for event in call]
    # SQLite commits concurrent writes together (group commit): a call may carry several commits' events.
    assert all(recorder.calls)
    assert len(announced) == 50
    assert announced == sorted(set(announced))
    assert announced == [event.id for event in await store.events_after(start, limit=1000)]


# -- inline data -------------------------------------------------------------------------------

PLACEHOLDER = "inline:image/png;bytes=3;sha256=" + "0" * 64
INLINE = {PLACEHOLDER: "data:image/png;base64,AAAA"}
WITH_PLACEHOLDER = {"prompt": "a cat", "reference_images": [PLACEHOLDER]}


async def test_inline_data_is_stored_once_apart_from_the_job(backend: Backend, store: Store) -> None:
    job = await create(store, input=WITH_PLACEHOLDER, inline=INLINE)
    await store.update_job(job.id, to_status("processing"))
    assert await store.inline_data(job.id) == INLINE
    assert await store.get_job(job.id) == replace(job, status="processing", updated_at="2025-06-01T12:00:01.000Z")
    assert [j.input for j in await store.list_jobs(KEY_A.id, JobFilter(), limit=10)] == [WITH_PLACEHOLDER]
    assert await backend.execute("SELECT count(*) FROM job_inline") == [(1,)]
    assert await backend.execute("SELECT count(*) FROM jobs WHERE CAST(input AS text) LIKE '%base64,AAAA%'") == [(0,)]


async def test_a_job_without_inline_data_has_none(store: Store) -> None:
    job = await create(store)
    assert await store.inline_data(job.id) == {}
    assert await store.inline_data("job_unknown") == {}


async def test_an_idempotent_repeat_keeps_the_first_inline_data(store: Store) -> None:
    first = make_job(input=WITH_PLACEHOLDER)
    await store.create_job(first, "job.created", idempotency=CLAIM, inline=INLINE)
    again = await store.create_job(make_job(), "job.created", idempotency=CLAIM, inline={PLACEHOLDER: "data:,other"})
    assert again.created is False
    assert await store.inline_data(first.id) == INLINE


async def test_jobs_stored_before_the_inline_migration_read_as_stored(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrations.load
    monkeypatch.setattr(migrations, "load", lambda name: [m for m in real(name) if not m[1].endswith("_inline_data")])
    old_store = backend.new_store()
    await old_store.open()
    await old_store.create_api_key(KEY_A)
    job = make_job(input={"prompt": "a cat", "first_frame": "data:image/png;base64,AAAA"})
    await old_store.create_job(job, "job.created")
    await old_store.close()
    assert "job_inline" not in await backend.tables()
    monkeypatch.undo()
    store = backend.new_store()
    await store.open()
    try:
        assert await store.get_job(job.id) == job
        assert await store.list_jobs(KEY_A.id, JobFilter(), limit=10) == [job]
        assert await store.inline_data(job.id) == {}
    finally:
        await store.close()


# -- the event log -----------------------------------------------------------------------------


async def test_events_after_is_strictly_after_and_oldest_first(store: Store) -> None:
    first = await store.create_job(make_job(), "job.created")
    second = await store.create_job(make_job(), "job.created")
    third = await store.update_job(first.job.id, to_status("processing"))
    assert first.event is not None
    assert await store.events_after(first.event.id) == [second.event, third.event]


async def test_events_after_stops_at_limit(store: Store) -> None:
    outcomes = [await store.create_job(make_job(), "job.created") for _ in range(3)]
    assert await store.events_after(0, limit=2) == [outcomes[0].event, outcomes[1].event]


async def test_events_after_with_max_bytes_returns_what_fits_and_at_least_one(store: Store) -> None:
    jobs = [await create(store) for _ in range(4)]
    every = await store.events_after(0)
    sizes = [len(event.job) for event in every]
    assert await store.events_after(0, max_bytes=sizes[0] + sizes[1]) == every[:2]
    assert await store.events_after(0, max_bytes=sizes[0] + sizes[1] - 1) == every[:1]
    assert await store.events_after(0, max_bytes=1) == every[:1]
    assert await store.events_after(0, max_bytes=sum(sizes), limit=3) == every[:3]
    assert await store.events_after(every[0].id, max_bytes=1, job_id=jobs[2].id) == [every[2]]
    assert await store.events_after(every[-1].id, max_bytes=1) == []


async def test_events_after_filters_by_api_key(store: Store) -> None:
    mine = await store.create_job(make_job(), "job.created")
    await store.create_job(make_job(api_key_id=KEY_B.id), "job.created")
    assert await store.events_after(0, api_key_id=KEY_A.id) == [mine.event]


async def test_events_after_filters_by_job(store: Store) -> None:
    job = await create(store)
    await create(store)
    updated = await store.update_job(job.id, to_status("processing"))
    events = await store.events_after(0, job_id=job.id)
    assert [e.type for e in events] == ["job.created", "job.updated"]
    assert events[-1] == updated.event


async def test_last_event_id_is_zero_without_events(store: Store) -> None:
    assert await store.last_event_id() == 0


async def test_last_event_id_is_the_newest_event(store: Store) -> None:
    await create(store)
    outcome = await store.create_job(make_job(), "job.created")
    assert outcome.event is not None
    assert await store.last_event_id() == outcome.event.id


# -- dispatch and poll leases ------------------------------------------------------------------

NOW = 1_750_000_000.0
LEASE = 30.0


async def test_claim_dispatch_takes_due_pending_and_sending_jobs(store: Store) -> None:
    pending = await create(store, next_attempt_at=NOW - 5)
    sending = await create(store, dispatch_state=DispatchState.SENDING, next_attempt_at=NOW)
    await create(store, next_attempt_at=NOW + 1)
    claimed = await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE)
    assert claimed == [replace(pending, lease_until=NOW + LEASE), replace(sending, lease_until=NOW + LEASE)]


async def test_claim_dispatch_never_takes_done_jobs(store: Store) -> None:
    await create(store, dispatch_state=DispatchState.DONE, next_attempt_at=NOW - 5)
    assert await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE) == []


async def test_claim_dispatch_takes_the_longest_due_first_up_to_limit(store: Store) -> None:
    later = await create(store, next_attempt_at=NOW - 1)
    earliest = await create(store, next_attempt_at=NOW - 3)
    await create(store, next_attempt_at=NOW - 2)
    claimed = await store.claim_dispatch(NOW, limit=1, lease_seconds=LEASE)
    assert [j.id for j in claimed] == [earliest.id]
    assert later.id not in [j.id for j in await store.claim_dispatch(NOW, limit=1, lease_seconds=LEASE)]


async def test_a_dispatch_lease_is_stored_and_blocks_a_second_claim(store: Store) -> None:
    job = await create(store, next_attempt_at=NOW)
    await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE)
    assert await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE) == []
    assert await store.get_job(job.id) == replace(job, lease_until=NOW + LEASE)


async def test_an_expired_dispatch_lease_can_be_claimed_again(store: Store) -> None:
    job = await create(store, next_attempt_at=NOW)
    await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE)
    claimed = await store.claim_dispatch(NOW + LEASE, limit=10, lease_seconds=LEASE)
    assert claimed == [replace(job, lease_until=NOW + 2 * LEASE)]


async def test_release_leases_makes_leased_jobs_claimable(store: Store) -> None:
    dispatch = await create(store, next_attempt_at=NOW)
    poll = await create(store, stage=Stage.SUBMITTED, dispatch_state=DispatchState.DONE, next_poll_at=NOW)
    await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE)
    await store.claim_polls(NOW, limit=10, lease_seconds=LEASE)
    assert await store.release_leases() == 2
    assert [j.id for j in await store.claim_dispatch(NOW, limit=10, lease_seconds=LEASE)] == [dispatch.id]
    assert [j.id for j in await store.claim_polls(NOW, limit=10, lease_seconds=LEASE)] == [poll.id]


async def test_release_leases_without_leases_releases_nothing(store: Store) -> None:
    await create(store, next_attempt_at=NOW)
    assert await store.release_leases() == 0


async def test_claim_polls_takes_due_submitted_and_processing_jobs(store: Store) -> None:
    submitted = await create(store, stage=Stage.SUBMITTED, dispatch_state=DispatchState.DONE, next_poll_at=NOW - 5)
    processing = await create(store, stage=Stage.PROCESSING, dispatch_state=DispatchState.DONE, next_poll_at=NOW)
    await create(store, stage=Stage.PROCESSING, dispatch_state=DispatchState.DONE, next_poll_at=NOW + 1)
    claimed = await store.claim_polls(NOW, limit=10, lease_seconds=LEASE)
    assert claimed == [replace(submitted, lease_until=NOW + LEASE), replace(processing, lease_until=NOW + LEASE)]


@pytest.mark.parametrize("stage", [Stage.QUEUED, Stage.TERMINAL])
async def test_claim_polls_never_takes_queued_or_terminal_jobs(store: Store, stage: Stage) -> None:
    await create(store, stage=stage, next_poll_at=NOW - 5)
    assert await store.claim_polls(NOW, limit=10, lease_seconds=LEASE) == []


async def test_a_poll_lease_blocks_claims_until_it_expires(store: Store) -> None:
    job = await create(store, stage=Stage.SUBMITTED, dispatch_state=DispatchState.DONE, next_poll_at=NOW)
    await store.claim_polls(NOW, limit=10, lease_seconds=LEASE)
    assert await store.claim_polls(NOW + LEASE - 1, limit=10, lease_seconds=LEASE) == []
    assert [j.id for j in await store.claim_polls(NOW + LEASE, limit=10, lease_seconds=LEASE)] == [job.id]


async def test_claim_polls_of_some_providers_takes_only_theirs_and_excluding_them_the_others(store: Store) -> None:
    polled = {"stage": Stage.SUBMITTED, "dispatch_state": DispatchState.DONE}
    mine = await create(store, provider="mindvideo", next_poll_at=NOW - 5, **polled)
    await create(store, provider="mindvideo", next_poll_at=NOW + 5, **polled)  # not due yet
    other = await create(store, provider="imini", next_poll_at=NOW - 9, **polled)
    assert [j.id for j in await store.claim_polls(NOW, 10, LEASE, providers=["mindvideo"])] == [mine.id]
    assert [j.id for j in await store.claim_polls(NOW, 10, LEASE, providers=["mindvideo"], exclude=True)] == [other.id]


async def test_oldest_due_polls_gives_each_providers_earliest_unfinished_poll(store: Store) -> None:
    polled = {"stage": Stage.SUBMITTED, "dispatch_state": DispatchState.DONE}
    await create(store, provider="mindvideo", next_poll_at=NOW - 5, **polled)
    await create(store, provider="mindvideo", next_poll_at=NOW + 5, **polled)
    await create(store, provider="imini", stage=Stage.TERMINAL, next_poll_at=NOW - 9)  # finished: not counted
    assert await store.oldest_due_polls(["mindvideo", "imini"]) == {"mindvideo": NOW - 5}


POLLED = {"stage": Stage.PROCESSING, "status": "processing", "dispatch_state": DispatchState.DONE}


async def claimed_polls(store: Store, count: int) -> list[JobRecord]:
    """`count` processing jobs, each with its own task, claimed for a status check at NOW."""
    for n in range(count):
        await create(store, provider_task_id=f"task-{n}", next_poll_at=NOW - n, **POLLED)
    return sorted(
        await store.claim_polls(NOW, limit=count, lease_seconds=LEASE), key=lambda j: j.provider_task_id or ""
    )


async def test_reschedule_polls_sets_each_next_check_counts_it_and_drops_the_lease(store: Store) -> None:
    first, second = await claimed_polls(store, 2)
    items = [PollReschedule(job=first, next_poll_at=NOW + 30), PollReschedule(job=second, next_poll_at=NOW + 45)]
    assert await store.reschedule_polls(items) == 2
    assert await store.get_job(first.id) == replace(first, next_poll_at=NOW + 30, poll_attempts=1, lease_until=None)
    assert await store.get_job(second.id) == replace(second, next_poll_at=NOW + 45, poll_attempts=1, lease_until=None)
    assert [j.id for j in await store.claim_polls(NOW + 31, limit=10, lease_seconds=LEASE)] == [first.id]


async def test_reschedule_polls_leaves_a_job_that_changed_since_its_claim_and_drops_only_its_lease(
    store: Store,
) -> None:
    callback, confirm, moved, cancelled, kept = await claimed_polls(store, 5)
    await store.update_job(callback.id, to_status("succeeded", "job.succeeded"))  # a callback finished it
    await store.update_job(confirm.id, lambda j: (replace(j, next_poll_at=NOW, lease_until=None), None))
    await store.update_job(moved.id, lambda j: (replace(j, provider_task_id="task-next"), "job.rerouted"))
    await store.update_job(cancelled.id, lambda j: (replace(j, stage=Stage.TERMINAL, status="cancelled"), None))
    changed = {j.id: await store.get_job(j.id) for j in (callback, confirm, moved, cancelled)}
    items = [PollReschedule(job=j, next_poll_at=NOW + 30) for j in (callback, confirm, moved, cancelled, kept)]
    assert await store.reschedule_polls(items) == 1
    for job_id, before in changed.items():
        assert before is not None
        assert await store.get_job(job_id) == replace(before, lease_until=None)
    assert await store.get_job(kept.id) == replace(kept, next_poll_at=NOW + 30, poll_attempts=1, lease_until=None)


async def test_reschedule_polls_leaves_a_job_claimed_again_after_its_lease_ran_out(store: Store) -> None:
    (stale,) = await claimed_polls(store, 1)
    (again,) = await store.claim_polls(NOW + LEASE, limit=10, lease_seconds=LEASE)
    assert await store.reschedule_polls([PollReschedule(job=stale, next_poll_at=NOW + 30)]) == 0
    assert await store.get_job(stale.id) == again  # the second claim's lease stands
    assert await store.reschedule_polls([]) == 0


# -- usage -------------------------------------------------------------------------------------


def on(day: str) -> str:
    return f"2025-06-{day}T12:00:00.000Z"


async def test_usage_sums_credits_by_day_model_and_status(store: Store) -> None:
    await create(store, created_at=on("01"), status="succeeded", cost={"credits_estimate": 10, "credits_charged": 8})
    await create(store, created_at=on("01"), status="succeeded", cost={"credits_estimate": 5, "credits_charged": 5})
    await create(store, created_at=on("01"), status="failed", cost={"credits_estimate": 10, "credits_charged": 0})
    await create(store, created_at=on("01"), model="fast", status="succeeded", cost={"credits_estimate": 2.5})
    await create(store, created_at=on("02"), status="queued")
    await create(store, created_at=on("01"), api_key_id=KEY_B.id, status="succeeded", cost={"credits_charged": 99})
    await create(store, created_at=on("02"), status="succeeded", cost={"usd_estimate": 0.07, "usd_charged": 0.0657})
    rows = [
        (r.day, r.model, r.status, r.jobs, r.credits_estimate, r.credits_charged, r.usd_estimate, r.usd_charged)
        for r in await store.usage(KEY_A.id, None, None)
    ]
    assert rows == [
        ("2025-06-01", "fast", "succeeded", 1, Decimal("2.5"), None, None, None),
        ("2025-06-01", "seedance-2.0", "failed", 1, 10, 0, None, None),
        ("2025-06-01", "seedance-2.0", "succeeded", 2, 15, 13, None, None),
        ("2025-06-02", "seedance-2.0", "queued", 1, None, None, None, None),
        ("2025-06-02", "seedance-2.0", "succeeded", 1, None, None, Decimal("0.07"), Decimal("0.0657")),
    ]


async def test_usage_sums_are_exact_decimals_and_count_the_jobs_each_sum_leaves_out(store: Store) -> None:
    for usd in (0.1, 0.2):
        await create(store, status="succeeded", cost={"usd_charged": usd, "credits_estimate": 1})
    await create(store, status="succeeded", cost={"credits_estimate": 1})  # a provider without a USD price
    await create(store, status="succeeded", cost={"usd_charged": "n/a"})  # not a number: counted as missing
    [row] = await store.usage(KEY_A.id, None, None)
    assert row.jobs == 4
    assert row.usd_charged == Decimal("0.3")  # as float: 0.30000000000000004
    assert isinstance(row.usd_charged, Decimal)
    assert row.credits_estimate == 3
    assert (row.usd_estimate, row.credits_charged) == (None, None)
    assert row.without == {"credits_estimate": 1, "credits_charged": 4, "usd_estimate": 4, "usd_charged": 2}


async def test_usage_start_is_inclusive_and_end_exclusive(store: Store) -> None:
    for day in ("01", "02", "03"):
        await create(store, created_at=on(day), status="succeeded", cost={"credits_charged": 1})
    rows = await store.usage(KEY_A.id, on("02"), on("03"))
    assert [(r.day, r.jobs, r.credits_charged) for r in rows] == [("2025-06-02", 1, 1)]


async def test_usage_of_a_key_without_jobs_is_empty(store: Store) -> None:
    await create(store)
    assert await store.usage(KEY_B.id, None, None) == []


# -- retention ---------------------------------------------------------------------------------

CUTOFF = "2025-06-10T00:00:00.000Z"
BEFORE_CUTOFF = "2025-06-01T12:00:00.000Z"
AFTER_CUTOFF = "2025-06-20T12:00:00.000Z"


async def finished(
    store: Store,
    completed_at: str,
    status: str = "succeeded",
    *,
    inline: dict[str, str] | None = None,
    **changes: object,
) -> JobRecord:
    """A job taken through processing to `status` at `completed_at`: three events."""
    job = await create(store, inline=inline, **changes)
    await store.update_job(job.id, to_status("processing"))

    def finish(current: JobRecord) -> Decision:
        done = replace(current, status=status, stage=Stage.TERMINAL, completed_at=completed_at, updated_at=completed_at)
        return done, f"job.{status}"

    return (await store.update_job(job.id, finish)).job


async def test_prune_removes_jobs_finished_before_the_cutoff_with_their_events(store: Store) -> None:
    old = [await finished(store, BEFORE_CUTOFF, status) for status in ("succeeded", "failed", "cancelled")]
    counts = await store.prune(CUTOFF)
    assert counts == PruneCounts(jobs=3, events=9)
    assert [await store.get_job(job.id) for job in old] == [None, None, None]
    assert await store.events_after(0) == []


async def test_prune_removes_the_inline_data_of_the_jobs_it_removes(backend: Backend, store: Store) -> None:
    old = await finished(store, BEFORE_CUTOFF, input=WITH_PLACEHOLDER, inline=INLINE)
    kept = await finished(store, AFTER_CUTOFF, input=WITH_PLACEHOLDER, inline=INLINE)
    await store.prune(CUTOFF)
    assert await store.inline_data(old.id) == {}
    assert await store.inline_data(kept.id) == INLINE
    assert await backend.execute("SELECT count(*) FROM job_inline") == [(1,)]


async def test_prune_keeps_jobs_finished_at_or_after_the_cutoff(store: Store) -> None:
    kept = [await finished(store, CUTOFF), await finished(store, AFTER_CUTOFF)]
    events = await store.events_after(0)
    assert await store.prune(CUTOFF) == PruneCounts()
    assert [await store.get_job(job.id) for job in kept] == kept
    assert await store.events_after(0) == events


async def test_prune_never_removes_unfinished_jobs(store: Store) -> None:
    ancient = "2000-01-01T00:00:00.000Z"
    queued = await create(store, created_at=ancient, updated_at=ancient)
    running = await create(store, created_at=ancient, updated_at=ancient, status="processing", stage=Stage.PROCESSING)
    events = await store.events_after(0)
    assert await store.prune(AFTER_CUTOFF) == PruneCounts()
    assert [await store.get_job(queued.id), await store.get_job(running.id)] == [queued, running]
    assert await store.events_after(0) == events


async def test_prune_hands_each_batch_to_its_hook_while_the_jobs_still_exist(store: Store) -> None:
    old = [await finished(store, BEFORE_CUTOFF) for _ in range(3)]
    batches: list[list[str]] = []

    async def hook(job_ids: list[str]) -> None:
        assert all([await store.get_job(job_id) for job_id in job_ids])  # the rows go only after the hook
        batches.append(job_ids)

    counts = await store.prune(CUTOFF, batch_size=2, before_jobs_pruned=hook)
    assert counts.jobs == 3
    assert sorted(job_id for batch in batches for job_id in batch) == sorted(job.id for job in old)
    assert [len(batch) for batch in batches] == [2, 1]


async def test_prune_keeps_a_batch_whose_hook_fails(store: Store) -> None:
    old = await finished(store, BEFORE_CUTOFF)

    async def hook(job_ids: list[str]) -> None:
        raise OSError("the asset store is unreachable")

    with pytest.raises(OSError, match="unreachable"):
        await store.prune(CUTOFF, before_jobs_pruned=hook)
    assert await store.get_job(old.id) is not None


ASSETS = {"videos": [], "last_frame_url": None, "assets": [{"variant": "video", "index": 0}]}


async def test_jobs_with_assets_are_the_old_succeeded_ones_whose_assets_have_not_expired(store: Store) -> None:
    wanted = [await finished(store, BEFORE_CUTOFF, output=ASSETS) for _ in range(3)]
    await finished(store, BEFORE_CUTOFF, output={**ASSETS, "assets_expired_at": BEFORE_CUTOFF})
    await finished(store, BEFORE_CUTOFF, output={"videos": [], "last_frame_url": None})
    await finished(store, BEFORE_CUTOFF, "failed", output=ASSETS)
    await finished(store, AFTER_CUTOFF, output=ASSETS)
    await finished(store, BEFORE_CUTOFF)  # no output at all
    first = await store.jobs_with_assets(CUTOFF, limit=2)
    rest = await store.jobs_with_assets(CUTOFF, after=first[-1], limit=2)
    assert [job_id for _, job_id in first + rest] == sorted(job.id for job in wanted)
    assert {completed_at for completed_at, _ in first + rest} == {BEFORE_CUTOFF}


async def test_prune_keeps_old_events_of_a_kept_job(store: Store) -> None:
    kept = await create(store, created_at=BEFORE_CUTOFF, updated_at=BEFORE_CUTOFF)
    await store.update_job(kept.id, to_status("processing"))  # logged before the cutoff too
    await finished(store, BEFORE_CUTOFF)
    await store.prune(CUTOFF)
    assert [(e.job_id, e.type) for e in await store.events_after(0)] == [
        (kept.id, "job.created"),
        (kept.id, "job.updated"),
    ]


async def test_prune_removes_idempotency_keys_created_before_the_cutoff(store: Store) -> None:
    old = make_job(created_at=BEFORE_CUTOFF)  # unfinished: the job stays, its key expires
    await store.create_job(old, "job.created", idempotency=CLAIM)
    recent = make_job(created_at=AFTER_CUTOFF)
    await store.create_job(recent, "job.created", idempotency=replace(CLAIM, key="idem-2"))
    assert await store.prune(CUTOFF) == PruneCounts(idempotency_keys=1)
    again = await store.create_job(make_job(), "job.created", idempotency=CLAIM)
    assert again.created is True
    repeated = await store.create_job(make_job(), "job.created", idempotency=replace(CLAIM, key="idem-2"))
    assert (repeated.created, repeated.job.id) == (False, recent.id)


async def test_the_store_stamps_receipts_and_migrations_with_its_clock_to_the_microsecond(backend: Backend) -> None:
    store = backend.new_store(clock=lambda: 1_750_000_000.25)
    await store.open()
    try:
        await store.create_api_key(KEY_A)
        job = await create(store)
        await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    finally:
        await store.close()
    stamp = "2025-06-15T15:06:40.250000Z"
    assert await backend.execute("SELECT received_at FROM webhook_receipts") == [(stamp,)]
    assert {at for (at,) in await backend.execute("SELECT applied_at FROM schema_migrations")} == {stamp}


async def test_prune_removes_webhook_receipts_received_before_the_cutoff(store: Store) -> None:
    job = await create(store)
    await store.update_job(job.id, to_status("processing"), receipt=RECEIPT)
    # The store stamps receipts with its own clock: a cutoff in the past keeps one, one far ahead removes it.
    assert await store.prune("2000-01-01T00:00:00.000Z") == PruneCounts()
    assert (await store.update_job(job.id, to_status("failed"), receipt=RECEIPT)).duplicate is True
    assert await store.prune("9999-01-01T00:00:00.000Z") == PruneCounts(webhook_receipts=1)
    assert (await store.update_job(job.id, to_status("failed"), receipt=RECEIPT)).duplicate is False


async def test_a_key_outliving_its_pruned_job_makes_a_new_job(store: Store) -> None:
    # A clock stepped back can finish a job "before" it was created; the key then survives its job.
    original = make_job(created_at=AFTER_CUTOFF)
    await store.create_job(original, "job.created", idempotency=CLAIM)
    await store.update_job(
        original.id,
        lambda j: (replace(j, status="failed", stage=Stage.TERMINAL, completed_at=BEFORE_CUTOFF), "job.failed"),
    )
    assert await store.prune(CUTOFF) == PruneCounts(jobs=1, events=2)
    again = await store.create_job(make_job(), "job.created", idempotency=CLAIM)
    assert again.created is True
    assert await store.get_job(again.job.id) == again.job


async def test_prune_in_small_batches_removes_everything_due(store: Store) -> None:
    for _ in range(7):
        await finished(store, BEFORE_CUTOFF)
    kept = await finished(store, AFTER_CUTOFF)
    assert await store.prune(CUTOFF, batch_size=3) == PruneCounts(jobs=7, events=21)
    assert {e.job_id for e in await store.events_after(0)} == {kept.id}


async def test_prunable_counts_what_prune_removes_and_removes_nothing(store: Store) -> None:
    for status in ("succeeded", "failed"):
        await finished(store, BEFORE_CUTOFF, status)
    await finished(store, AFTER_CUTOFF)
    await store.create_job(make_job(created_at=BEFORE_CUTOFF), "job.created", idempotency=CLAIM)
    events = await store.events_after(0)
    expected = PruneCounts(jobs=2, events=6, idempotency_keys=1)
    assert await store.prunable(CUTOFF) == expected
    assert await store.events_after(0) == events
    assert await store.prune(CUTOFF) == expected
    assert await store.prunable(CUTOFF) == PruneCounts()


async def test_other_writes_go_through_while_a_prune_runs(store: Store) -> None:
    for _ in range(20):
        await finished(store, BEFORE_CUTOFF)
    pruning = asyncio.create_task(store.prune(CUTOFF, batch_size=1))
    await asyncio.sleep(0)
    job = await create(store)  # waits for one batch, not for the whole prune
    assert not pruning.done()
    assert (await pruning).jobs == 20
    assert await store.get_job(job.id) == job


async def test_resuming_from_a_pruned_event_returns_what_remains(store: Store) -> None:
    await finished(store, BEFORE_CUTOFF)
    seen = (await store.events_after(0))[0].id  # a client saw the first event of a job later pruned
    kept = await create(store)
    await store.prune(CUTOFF)
    remaining = await store.events_after(seen)
    assert [e.job_id for e in remaining] == [kept.id]
    assert await store.last_event_id() == remaining[-1].id


# -- durability --------------------------------------------------------------------------------


async def test_jobs_and_events_survive_a_restart(backend: Backend, store: Store) -> None:
    job = await create(store)
    updated = await store.update_job(job.id, to_status("processing"))
    events = await store.events_after(0)
    await store.close()
    reopened = backend.new_store()
    await reopened.open()
    try:
        assert await reopened.get_api_key(KEY_A.id) == KEY_A
        assert await reopened.get_job(job.id) == updated.job
        assert await reopened.events_after(0) == events
    finally:
        await reopened.close()


async def test_receipts_and_idempotency_keys_survive_a_restart(backend: Backend, store: Store) -> None:
    original = make_job()
    await store.create_job(original, "job.created", idempotency=CLAIM)
    await store.update_job(original.id, to_status("processing"), receipt=RECEIPT)
    await store.close()
    reopened = backend.new_store()
    await reopened.open()
    try:
        again = await reopened.create_job(make_job(), "job.created", idempotency=CLAIM)
        assert (again.created, again.job.id) == (False, original.id)
        redelivered = await reopened.update_job(original.id, to_status("failed"), receipt=RECEIPT)
        assert redelivered.duplicate is True
    finally:
        await reopened.close()


async def test_a_server_secret_is_the_first_one_stored_by_any_store(backend: Backend, store: Store) -> None:
    assert await store.server_secret("asset_urls", new_value="first") == "first"
    other = backend.new_store()
    await other.open()
    try:
        assert await other.server_secret("asset_urls", new_value="second") == "first"
        assert await other.server_secret("stream_tokens", new_value="third") == "third"
    finally:
        await other.close()
    assert await store.server_secret("stream_tokens", new_value="fourth") == "third"
