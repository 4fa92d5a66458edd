"""The caller webhook part of the storage contract, on every backend: secrets, endpoints, deliveries recorded
with their events, the deliverer's queue, the attempt log, and retention."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
import pytest

from storage import (
    AttemptRecord,
    AttemptResult,
    Declined,
    DeliveryCounts,
    DeliveryStatus,
    EndpointChange,
    EndpointRecord,
    JobRecord,
    PruneCounts,
    SigningSecret,
    Stage,
    Store,
    TaskTaken,
)
from storage.rows import iso_timestamp
from tests.storage.conftest import Backend
from tests.storage.factories import KEY_A, KEY_B, make_endpoint, make_job
from tests.storage.test_contract import AFTER_CUTOFF, BEFORE_CUTOFF, CUTOFF, finished, to_status

replace = msgspec.structs.replace
NOW = 1_750_000_000.0
DAY = 86_400.0
JOB_URL = "https://jobs.example/hook"
FINAL = ["job.succeeded", "job.failed", "job.cancelled"]
PENDING, SUCCEEDED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(backend: Backend, clock: Clock) -> AsyncIterator[Store]:
    """An open store on `clock`, holding KEY_A (with its webhook secret) and KEY_B."""
    opened = backend.new_store(clock=clock)
    await opened.open()
    await opened.create_api_key(KEY_A)
    await opened.create_api_key(KEY_B)
    await opened.webhook_secret(KEY_A.id, new_secret="whsec_key_a")
    yield opened
    await opened.close()


async def endpoint(store: Store, **changes: object) -> EndpointRecord:
    made = make_endpoint(**changes)
    assert await store.create_endpoint(made, max_per_key=50)
    return made


async def job_with_url(store: Store, events: list[str] | None = None, **changes: object) -> JobRecord:
    job = make_job(webhook_url=JOB_URL, webhook_events=events or ["*"], **changes)
    await store.create_job(job, "job.created")
    return job


def result(
    delivery_id: str,
    status: str,
    *,
    at: float = NOW,
    code: int | None = 500,
    next_at: float | None = None,
    disable: str | None = None,
    error: str | None = None,
) -> AttemptResult:
    attempt = AttemptRecord(
        delivery_id=delivery_id,
        attempted_at=iso_timestamp(at),
        duration_ms=12.5,
        status_code=code,
        response_body=None if code is None else f"answer {code}",
        error=error,
    )
    return AttemptResult(attempt=attempt, status=status, at=at, next_attempt_at=next_at, disable_endpoint=disable)


async def claim(
    store: Store, *, limit: int = 100, per_target: int = 100, busy: dict[str, int] | None = None, now: float = NOW
) -> list[str]:
    claimed = await store.claim_deliveries(now, limit, 60.0, per_target=per_target, busy=busy or {})
    return [c.delivery.id for c in claimed]


async def deliveries_of(store: Store, job: JobRecord) -> list[tuple[str, str | None, str]]:
    return [
        (v.delivery.target, v.delivery.endpoint_id, v.delivery.event_type)
        for v in await store.job_deliveries(KEY_A.id, job.id)
    ]


# -- signing secrets ---------------------------------------------------------------------------


async def test_a_keys_secret_is_stored_once_and_then_kept(store: Store) -> None:
    first = await store.webhook_secret(KEY_B.id, new_secret="whsec_one")
    again = await store.webhook_secret(KEY_B.id, new_secret="whsec_two")
    assert first == again == SigningSecret(secret="whsec_one")


async def test_rotating_a_keys_secret_keeps_the_old_one_signing_for_the_overlap(store: Store) -> None:
    rotated = await store.rotate_webhook_secret(KEY_A.id, new_secret="whsec_new", now=NOW, overlap_seconds=DAY)
    assert rotated == SigningSecret(secret="whsec_new", previous="whsec_key_a", previous_expires_at=NOW + DAY)
    assert await store.webhook_secret(KEY_A.id, new_secret="whsec_other") == rotated
    assert rotated.signing(NOW + DAY - 1) == ("whsec_new", "whsec_key_a")
    assert rotated.signing(NOW + DAY) == ("whsec_new",)


async def test_rotating_a_key_without_a_secret_just_stores_the_new_one(store: Store) -> None:
    rotated = await store.rotate_webhook_secret(KEY_B.id, new_secret="whsec_new", now=NOW, overlap_seconds=DAY)
    assert rotated == SigningSecret(secret="whsec_new")


# -- endpoints ---------------------------------------------------------------------------------


async def test_endpoints_round_trip_and_are_listed_oldest_first_per_key(store: Store) -> None:
    made = [await endpoint(store, events=["job.succeeded"], description="first"), await endpoint(store)]
    other = await endpoint(store, api_key_id=KEY_B.id)
    assert await store.list_endpoints(KEY_A.id) == made
    assert await store.get_endpoint(KEY_A.id, made[0].id) == made[0]
    assert await store.get_endpoint(KEY_A.id, other.id) is None
    assert await store.list_endpoints(KEY_B.id) == [other]


async def test_a_key_holds_at_most_max_per_key_endpoints(store: Store) -> None:
    for _ in range(2):
        assert await store.create_endpoint(make_endpoint(), max_per_key=2)
    assert not await store.create_endpoint(make_endpoint(), max_per_key=2)
    assert len(await store.list_endpoints(KEY_A.id)) == 2
    assert await store.create_endpoint(make_endpoint(api_key_id=KEY_B.id), max_per_key=2)


async def test_updating_an_endpoint_changes_only_what_the_patch_names(store: Store) -> None:
    made = await endpoint(store, description="keep")
    change = EndpointChange(url="https://hooks.example/new", events=["job.failed"])
    updated = await store.update_endpoint(KEY_A.id, made.id, change, now=NOW)
    assert updated == replace(made, url=change.url, events=change.events, updated_at=iso_timestamp(NOW))
    assert await store.get_endpoint(KEY_A.id, made.id) == updated
    assert await store.update_endpoint(KEY_B.id, made.id, change, now=NOW) is None


async def test_disabling_an_endpoint_by_request_fails_its_pending_deliveries(store: Store) -> None:
    made = await endpoint(store)
    job = await job_with_url(store)
    updated = await store.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=True), now=NOW)
    assert updated is not None
    assert (updated.disabled, updated.disabled_reason) == (True, "by_request")
    statuses = {v.delivery.target: v.delivery.status for v in await store.job_deliveries(KEY_A.id, job.id)}
    assert statuses == {made.id: FAILED, "url:" + JOB_URL: PENDING}


async def test_enabling_an_endpoint_clears_why_it_was_disabled_and_since_when_it_failed(store: Store) -> None:
    made = await endpoint(store, disabled=True, disabled_reason="failing", failing_since=NOW - 6 * DAY)
    updated = await store.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=False), now=NOW)
    assert updated is not None
    assert (updated.disabled, updated.disabled_reason, updated.failing_since) == (False, None, None)


async def test_deleting_an_endpoint_fails_its_pending_deliveries_which_stay_readable(store: Store) -> None:
    made = await endpoint(store)
    job = await job_with_url(store, events=["job.succeeded"])
    [delivery] = await store.job_deliveries(KEY_A.id, job.id)
    assert await store.delete_endpoint(KEY_B.id, made.id, now=NOW) is False
    assert await store.delete_endpoint(KEY_A.id, made.id, now=NOW) is True
    assert await store.get_endpoint(KEY_A.id, made.id) is None
    kept = await store.get_delivery(KEY_A.id, delivery.delivery.id)
    assert kept is not None
    assert kept.delivery.status == FAILED
    assert await store.delete_endpoint(KEY_A.id, made.id, now=NOW) is False


async def test_rotating_an_endpoint_secret_keeps_the_old_one_for_the_overlap(store: Store) -> None:
    made = await endpoint(store)
    rotated = await store.rotate_endpoint_secret(KEY_A.id, made.id, new_secret="whsec_2", now=NOW, overlap_seconds=DAY)
    assert rotated is not None
    assert rotated.signing == SigningSecret(secret="whsec_2", previous="whsec_endpoint", previous_expires_at=NOW + DAY)
    assert await store.get_endpoint(KEY_A.id, made.id) == rotated
    assert await store.rotate_endpoint_secret(KEY_B.id, made.id, new_secret="x", now=NOW, overlap_seconds=DAY) is None


# -- deliveries recorded with their events -----------------------------------------------------


async def test_a_jobs_url_gets_a_delivery_for_each_event_its_filter_takes(store: Store) -> None:
    job = await job_with_url(store, events=FINAL)
    await store.update_job(job.id, to_status("processing"))
    done = await store.update_job(
        job.id, lambda j: (replace(j, status="succeeded", stage=Stage.TERMINAL), "job.succeeded")
    )
    assert done.event is not None
    assert done.event.deliveries == 1
    assert await deliveries_of(store, job) == [("url:" + JOB_URL, None, "job.succeeded")]


async def test_each_enabled_endpoint_whose_events_match_gets_a_delivery(store: Store) -> None:
    every = await endpoint(store)
    created_only = await endpoint(store, events=["job.created"])
    await endpoint(store, events=["job.failed"])
    await endpoint(store, disabled=True, disabled_reason="gone")
    await endpoint(store, api_key_id=KEY_B.id)
    job = make_job()
    outcome = await store.create_job(job, "job.created")
    assert outcome.event is not None
    assert outcome.event.deliveries == 2
    assert sorted(await deliveries_of(store, job)) == sorted(
        [(every.id, every.id, "job.created"), (created_only.id, created_only.id, "job.created")]
    )


async def test_an_event_without_receivers_records_no_delivery(store: Store) -> None:
    job = make_job()
    outcome = await store.create_job(job, "job.created")
    assert outcome.event is not None
    assert outcome.event.deliveries == 0
    assert await store.job_deliveries(KEY_A.id, job.id) == []


async def test_a_delivery_is_stamped_by_the_store_clock_and_due_after_the_first_delay(
    backend: Backend, clock: Clock
) -> None:
    delayed = backend.new_store(clock=clock, first_delivery_delay=2.5)
    await delayed.open()
    try:
        await delayed.create_api_key(KEY_A)
        job = make_job(webhook_url=JOB_URL, webhook_events=["job.created"])
        await delayed.create_job(job, "job.created")
        [view] = await delayed.job_deliveries(KEY_A.id, job.id)
        [event] = await delayed.events_after(0)
    finally:
        await delayed.close()
    d = view.delivery
    assert (d.created_at, d.updated_at, d.next_attempt_at) == (iso_timestamp(NOW), iso_timestamp(NOW), NOW + 2.5)
    assert (d.status, d.url, d.job_id, d.event_id) == (PENDING, JOB_URL, job.id, event.id)
    assert (d.attempts, d.round_attempts, d.api_key_id, d.target) == (0, 0, KEY_A.id, "url:" + JOB_URL)


async def test_delivery_ids_are_msg_and_26_characters_increasing_in_creation_order(store: Store, clock: Clock) -> None:
    await endpoint(store)
    jobs = [make_job() for _ in range(5)]
    for job in jobs[:3]:  # the clock stands still: ids still increase
        await store.create_job(job, "job.created")
    clock.now -= 10  # and when it steps back
    for job in jobs[3:]:
        await store.create_job(job, "job.created")
    ids = [(await store.job_deliveries(KEY_A.id, job.id))[0].delivery.id for job in jobs]
    assert all(re.fullmatch(r"msg_[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


async def test_a_declined_update_records_no_delivery(store: Store) -> None:
    await endpoint(store)
    job = make_job()
    await store.create_job(job, "job.created")
    outcome = await store.update_job(job.id, lambda _: Declined("not now"))
    assert outcome.declined == "not now"
    assert len(await store.job_deliveries(KEY_A.id, job.id)) == 1


async def test_a_write_that_names_a_taken_task_records_no_delivery(store: Store) -> None:
    await endpoint(store)
    await job_with_url(store, provider_task_id="task-1")
    job = await job_with_url(store)
    with pytest.raises(TaskTaken):
        await store.update_job(job.id, lambda j: (replace(j, provider_task_id="task-1"), "job.submitted"))
    assert len(await store.job_deliveries(KEY_A.id, job.id)) == 2  # those of job.created only


REFUSE_DELIVERIES = {
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries WHEN NEW.url = 'https://refused.example/' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.url = 'https://refused.example/' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}


async def test_an_event_whose_delivery_cannot_be_stored_is_not_logged_either(backend: Backend, store: Store) -> None:
    for sql in REFUSE_DELIVERIES[backend.name]:
        await backend.execute(sql)
    await endpoint(store)
    job = make_job(webhook_url="https://refused.example/", webhook_events=["*"])
    with pytest.raises(Exception, match="refused"):
        await store.create_job(job, "job.created")
    assert await store.get_job(job.id) is None
    assert await store.events_after(0) == []
    assert await backend.execute("SELECT count(*) FROM webhook_deliveries") == [(0,)]


async def test_a_test_delivery_is_due_now_and_carries_its_payload(store: Store) -> None:
    made = await endpoint(store)
    delivery = await store.create_test_delivery(made, b'{"message": "hi"}', now=NOW + 5)
    assert (delivery.event_type, delivery.payload, delivery.next_attempt_at) == (
        "webhook.test",
        b'{"message": "hi"}',
        NOW + 5,
    )
    assert (delivery.job_id, delivery.event_id, delivery.endpoint_id, delivery.target) == (None, None, made.id, made.id)
    view = await store.get_delivery(KEY_A.id, delivery.id)
    assert view is not None
    assert view.delivery == delivery


# -- the deliverer's queue ---------------------------------------------------------------------


async def test_a_claim_carries_the_url_secret_and_event_to_send(store: Store) -> None:
    made = await endpoint(store, events=["job.created"])
    await job_with_url(store, events=["job.created"])
    await store.update_endpoint(KEY_A.id, made.id, EndpointChange(url="https://hooks.example/moved"), now=NOW)
    claimed = await store.claim_deliveries(NOW, 10, 60.0, per_target=8, busy={})
    by_target = {c.delivery.target: c for c in claimed}
    to_endpoint, to_job = by_target[made.id], by_target["url:" + JOB_URL]
    assert (to_endpoint.url, to_endpoint.signing) == ("https://hooks.example/moved", made.signing)
    assert (to_job.url, to_job.signing) == (JOB_URL, SigningSecret(secret="whsec_key_a"))
    [event] = await store.events_after(0)
    assert to_endpoint.event == to_job.event == event


async def test_a_test_claim_has_no_event(store: Store) -> None:
    made = await endpoint(store)
    delivery = await store.create_test_delivery(made, b"{}", now=NOW)
    [claimed] = await store.claim_deliveries(NOW, 10, 60.0, per_target=8, busy={})
    assert (claimed.delivery, claimed.event) == (delivery, None)


async def test_claims_take_the_longest_due_first_up_to_limit_and_never_what_is_not_due(store: Store) -> None:
    made = await endpoint(store)
    await store.create_test_delivery(made, b"{}", now=NOW + 1)
    first = await store.create_test_delivery(made, b"{}", now=NOW - 2)
    second = await store.create_test_delivery(made, b"{}", now=NOW - 1)
    assert await claim(store, limit=1) == [first.id]
    assert await claim(store) == [second.id]  # not `late`, due after NOW


async def test_a_lease_blocks_a_second_claim_until_it_expires(store: Store) -> None:
    made = await endpoint(store)
    delivery = await store.create_test_delivery(made, b"{}", now=NOW)
    assert await claim(store) == [delivery.id]
    assert await claim(store) == []
    again = await store.claim_deliveries(NOW + 61, 10, 60.0, per_target=8, busy={})
    assert [c.delivery.id for c in again] == [delivery.id]


async def test_a_claim_takes_at_most_per_target_to_one_receiver_and_skips_to_the_next(store: Store) -> None:
    slow, other = await endpoint(store), await endpoint(store)
    backlog = [await store.create_test_delivery(slow, b"{}", now=NOW - 10 + i) for i in range(6)]
    fresh = await store.create_test_delivery(other, b"{}", now=NOW)
    # The slow receiver's backlog comes first and fills a window of 3; its cap leaves room for the other.
    assert await claim(store, limit=3, per_target=2) == [backlog[0].id, backlog[1].id, fresh.id]


async def test_a_claim_counts_what_is_in_flight_and_skips_a_full_receiver_entirely(store: Store) -> None:
    slow, other = await endpoint(store), await endpoint(store)
    backlog = [await store.create_test_delivery(slow, b"{}", now=NOW - 10 + i) for i in range(5)]
    fresh = await store.create_test_delivery(other, b"{}", now=NOW)
    assert await claim(store, limit=1, per_target=2, busy={slow.id: 2}) == [fresh.id]
    assert await claim(store, limit=5, per_target=2, busy={slow.id: 1}) == [backlog[0].id]


async def test_a_disabled_endpoints_deliveries_are_never_claimed_and_one_resent_in_a_race_fails(store: Store) -> None:
    made = await endpoint(store)
    await store.create_test_delivery(made, b"{}", now=NOW)
    await store.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=True), now=NOW)
    delivery_id = (await store.endpoint_deliveries(KEY_A.id, made.id, status=None, limit=1))[0].delivery.id
    await store.resend_delivery(KEY_A.id, delivery_id, now=NOW)  # as the API would, had it checked just before
    assert await claim(store) == []
    view = await store.get_delivery(KEY_A.id, delivery_id)
    assert view is not None
    assert view.delivery.status == FAILED  # not pending, leased again and again
    assert await claim(store, now=NOW + 10_000) == []


async def test_release_leases_makes_claimed_deliveries_claimable_at_once(store: Store) -> None:
    made = await endpoint(store)
    delivery = await store.create_test_delivery(made, b"{}", now=NOW)
    await claim(store)
    assert await store.release_leases() == 1
    assert await claim(store) == [delivery.id]


# -- finishing attempts ------------------------------------------------------------------------


async def claimed_delivery(store: Store, made: EndpointRecord | None = None) -> str:
    made = made or await endpoint(store)
    delivery = await store.create_test_delivery(made, b"{}", now=NOW)
    assert delivery.id in await claim(store)
    return delivery.id


async def test_a_success_logs_the_attempt_and_ends_the_delivery(store: Store) -> None:
    delivery_id = await claimed_delivery(store)
    done = result(delivery_id, SUCCEEDED, code=204)
    assert await store.finish_attempts([done], disable_after_seconds=5 * DAY) == []
    view = await store.get_delivery(KEY_A.id, delivery_id)
    assert view is not None
    assert view.attempts == [done.attempt]
    d = view.delivery
    assert (d.status, d.attempts, d.round_attempts, d.last_status, d.next_attempt_at) == (SUCCEEDED, 1, 1, 204, None)
    assert await store.release_leases() == 0  # the lease went with the attempt


async def test_a_failure_with_retries_left_is_due_again_and_sets_failing_since(store: Store) -> None:
    made = await endpoint(store)
    delivery_id = await claimed_delivery(store, made)
    await store.finish_attempts(
        [result(delivery_id, PENDING, code=None, next_at=NOW + 5, error="timeout")], disable_after_seconds=5 * DAY
    )
    view = await store.get_delivery(KEY_A.id, delivery_id)
    assert view is not None
    d = view.delivery
    assert (d.status, d.attempts, d.round_attempts, d.last_status, d.next_attempt_at) == (PENDING, 1, 1, None, NOW + 5)
    assert view.attempts[0].error == "timeout"
    again = await store.get_endpoint(KEY_A.id, made.id)
    assert again is not None
    assert again.failing_since == NOW
    assert await store.claim_deliveries(NOW + 5, 10, 60.0, per_target=8, busy={}) != []


async def test_failing_since_is_kept_from_the_first_failure_and_cleared_by_a_success(store: Store) -> None:
    made = await endpoint(store)
    first, second = await claimed_delivery(store, made), await claimed_delivery(store, made)
    await store.finish_attempts([result(first, FAILED, at=NOW)], disable_after_seconds=5 * DAY)
    await store.finish_attempts([result(second, PENDING, at=NOW + 60, next_at=NOW + 65)], disable_after_seconds=5 * DAY)
    failing = await store.get_endpoint(KEY_A.id, made.id)
    assert failing is not None
    assert failing.failing_since == NOW
    third = await claimed_delivery(store, made)
    await store.finish_attempts([result(third, SUCCEEDED, code=200)], disable_after_seconds=5 * DAY)
    healthy = await store.get_endpoint(KEY_A.id, made.id)
    assert healthy is not None
    assert healthy.failing_since is None


async def test_an_endpoint_failing_longer_than_disable_after_is_disabled_with_its_pending_deliveries(
    store: Store,
) -> None:
    made = await endpoint(store, failing_since=NOW - 5 * DAY - 1)
    delivery_id = await claimed_delivery(store, made)
    waiting = await store.create_test_delivery(made, b"{}", now=NOW + 3600)
    disabled = await store.finish_attempts(
        [result(delivery_id, PENDING, next_at=NOW + 300)], disable_after_seconds=5 * DAY
    )
    assert disabled == [made.id]
    after = await store.get_endpoint(KEY_A.id, made.id)
    assert after is not None
    assert (after.disabled, after.disabled_reason) == (True, "failing")
    for delivery in (delivery_id, waiting.id):
        view = await store.get_delivery(KEY_A.id, delivery)
        assert view is not None
        assert view.delivery.status == FAILED
    assert await store.delivery_counts() == DeliveryCounts(pending=0, disabled_endpoints=1)


async def test_an_endpoint_failing_for_less_than_disable_after_stays_enabled(store: Store) -> None:
    made = await endpoint(store, failing_since=NOW - 5 * DAY + 1)
    delivery_id = await claimed_delivery(store, made)
    assert (
        await store.finish_attempts([result(delivery_id, PENDING, next_at=NOW + 300)], disable_after_seconds=5 * DAY)
        == []
    )


async def test_gone_disables_the_endpoint_at_once_and_fails_its_other_deliveries(store: Store) -> None:
    made, other = await endpoint(store), await endpoint(store)
    delivery_id = await claimed_delivery(store, made)
    sibling = await store.create_test_delivery(made, b"{}", now=NOW + 10)
    unrelated = await store.create_test_delivery(other, b"{}", now=NOW + 10)
    disabled = await store.finish_attempts(
        [result(delivery_id, FAILED, code=410, disable="gone")], disable_after_seconds=5 * DAY
    )
    assert disabled == [made.id]
    after = await store.get_endpoint(KEY_A.id, made.id)
    assert after is not None
    assert (after.disabled, after.disabled_reason) == (True, "gone")
    statuses = {}
    for delivery in (delivery_id, sibling.id, unrelated.id):
        view = await store.get_delivery(KEY_A.id, delivery)
        assert view is not None
        statuses[delivery] = view.delivery.status
    assert statuses == {delivery_id: FAILED, sibling.id: FAILED, unrelated.id: PENDING}


async def test_a_jobs_own_url_that_is_gone_just_fails(store: Store) -> None:
    job = await job_with_url(store, events=["job.created"])
    [delivery_id] = await claim(store)
    assert (
        await store.finish_attempts(
            [result(delivery_id, FAILED, code=410, disable="gone")], disable_after_seconds=5 * DAY
        )
        == []
    )
    [view] = await store.job_deliveries(KEY_A.id, job.id)
    assert (view.delivery.status, view.delivery.last_status) == (FAILED, 410)


async def test_many_results_finish_in_one_call(store: Store) -> None:
    made = await endpoint(store)
    ids = [(await store.create_test_delivery(made, b"{}", now=NOW)).id for _ in range(50)]
    assert sorted(await claim(store)) == sorted(ids)
    await store.finish_attempts([result(i, SUCCEEDED, code=200) for i in ids], disable_after_seconds=5 * DAY)
    views = await store.endpoint_deliveries(KEY_A.id, made.id, status=SUCCEEDED, limit=100)
    assert sorted(v.delivery.id for v in views) == sorted(ids)
    assert all(len(v.attempts) == 1 for v in views)


async def test_a_result_for_a_delivery_no_longer_pending_only_logs_its_attempt(store: Store) -> None:
    made = await endpoint(store)
    delivery_id = await claimed_delivery(store, made)
    await store.update_endpoint(KEY_A.id, made.id, EndpointChange(disabled=True), now=NOW)
    await store.finish_attempts([result(delivery_id, PENDING, next_at=NOW + 5)], disable_after_seconds=5 * DAY)
    view = await store.get_delivery(KEY_A.id, delivery_id)
    assert view is not None
    assert len(view.attempts) == 1
    assert (view.delivery.status, view.delivery.attempts, view.delivery.next_attempt_at) == (FAILED, 1, None)


# -- the attempt log, resend and recover -------------------------------------------------------


async def test_job_deliveries_are_oldest_first_with_attempts_in_order(store: Store) -> None:
    job = await job_with_url(store, events=["*"])
    await store.update_job(job.id, to_status("processing"))
    views = await store.job_deliveries(KEY_A.id, job.id)
    assert [v.delivery.event_type for v in views] == ["job.created", "job.updated"]
    first = views[0].delivery.id
    await claim(store)
    await store.finish_attempts([result(first, PENDING, at=NOW, next_at=NOW)], disable_after_seconds=DAY)
    await claim(store)
    await store.finish_attempts([result(first, SUCCEEDED, at=NOW + 1, code=200)], disable_after_seconds=DAY)
    [view, _] = await store.job_deliveries(KEY_A.id, job.id)
    assert [a.status_code for a in view.attempts] == [500, 200]
    assert await store.job_deliveries(KEY_B.id, job.id) == []


async def test_endpoint_deliveries_are_newest_first_filtered_and_paged(store: Store) -> None:
    made = await endpoint(store)
    ids = [(await store.create_test_delivery(made, b"{}", now=NOW)).id for _ in range(5)]
    await claim(store, limit=1)
    await store.finish_attempts([result(ids[0], SUCCEEDED, code=200)], disable_after_seconds=DAY)
    newest = list(reversed(ids))
    page = await store.endpoint_deliveries(KEY_A.id, made.id, status=None, limit=2)
    assert [v.delivery.id for v in page] == newest[:2]
    rest = await store.endpoint_deliveries(KEY_A.id, made.id, status=None, limit=10, before_id=newest[1])
    assert [v.delivery.id for v in rest] == newest[2:]
    assert [v.delivery.id for v in rest][-1] == ids[0]
    assert len(rest[-1].attempts) == 1
    pending = await store.endpoint_deliveries(KEY_A.id, made.id, status=PENDING, limit=10)
    assert [v.delivery.id for v in pending] == newest[:4]
    assert await store.endpoint_deliveries(KEY_B.id, made.id, status=None, limit=10) == []


async def test_a_delivery_of_another_key_is_not_found(store: Store) -> None:
    made = await endpoint(store)
    delivery = await store.create_test_delivery(made, b"{}", now=NOW)
    assert await store.get_delivery(KEY_B.id, delivery.id) is None
    assert await store.resend_delivery(KEY_B.id, delivery.id, now=NOW) is None


async def test_resend_keeps_the_id_and_the_log_and_starts_a_fresh_schedule(store: Store) -> None:
    made = await endpoint(store)
    delivery_id = await claimed_delivery(store, made)
    await store.finish_attempts([result(delivery_id, FAILED)], disable_after_seconds=5 * DAY)
    resent = await store.resend_delivery(KEY_A.id, delivery_id, now=NOW + 100)
    assert resent is not None
    assert (resent.id, resent.status, resent.round_attempts, resent.attempts) == (delivery_id, PENDING, 0, 1)
    assert (resent.next_attempt_at, resent.updated_at) == (NOW + 100, iso_timestamp(NOW + 100))
    claimed = await store.claim_deliveries(NOW + 100, 10, 60.0, per_target=8, busy={})
    assert [c.delivery.id for c in claimed] == [delivery_id]
    view = await store.get_delivery(KEY_A.id, delivery_id)
    assert view is not None
    assert len(view.attempts) == 1


async def test_recover_resends_only_the_failed_deliveries_created_in_the_range(store: Store, clock: Clock) -> None:
    made = await endpoint(store)
    ids = {}
    for name, at in (("before", NOW - 100), ("start", NOW), ("inside", NOW + 50), ("end", NOW + 100)):
        clock.now = at
        job = make_job()
        await store.create_job(job, "job.created")
        ids[name] = (await store.job_deliveries(KEY_A.id, job.id))[0].delivery.id
    pending = await store.create_test_delivery(made, b"{}", now=NOW + 10)
    claimed = await store.claim_deliveries(NOW + 100, 10, 60.0, per_target=100, busy={})
    await store.finish_attempts(
        [result(c.delivery.id, FAILED) for c in claimed if c.delivery.id != pending.id], disable_after_seconds=DAY
    )
    await store.release_leases()
    recovered = await store.recover_deliveries(
        KEY_A.id, made.id, since=iso_timestamp(NOW), until=iso_timestamp(NOW + 100), now=NOW + 200
    )
    assert recovered == 2
    statuses = {}
    for name, delivery_id in ids.items():
        view = await store.get_delivery(KEY_A.id, delivery_id)
        assert view is not None
        statuses[name] = (view.delivery.status, view.delivery.round_attempts)
    assert statuses == {"before": (FAILED, 1), "start": (PENDING, 0), "inside": (PENDING, 0), "end": (FAILED, 1)}
    assert await store.recover_deliveries(KEY_B.id, made.id, since="0", until="9", now=NOW) == 0


async def test_delivery_counts_count_pending_deliveries_and_disabled_endpoints(store: Store) -> None:
    assert await store.delivery_counts() == DeliveryCounts(pending=0, disabled_endpoints=0)
    made = await endpoint(store)
    await endpoint(store, disabled=True, disabled_reason="gone")
    await store.create_test_delivery(made, b"{}", now=NOW)
    await job_with_url(store, events=["job.created"])
    assert await store.delivery_counts() == DeliveryCounts(pending=3, disabled_endpoints=1)


# -- retention ---------------------------------------------------------------------------------


async def test_prune_removes_the_deliveries_and_attempts_of_the_jobs_it_removes(backend: Backend, store: Store) -> None:
    await endpoint(store, events=["job.succeeded"])
    old = await finished(store, BEFORE_CUTOFF, webhook_url=JOB_URL, webhook_events=FINAL)
    kept = await finished(store, AFTER_CUTOFF, webhook_url=JOB_URL, webhook_events=FINAL)
    claimed = await claim(store)
    await store.finish_attempts([result(i, SUCCEEDED, code=200) for i in claimed], disable_after_seconds=DAY)
    expected = PruneCounts(jobs=1, events=3, deliveries=2)
    assert await store.prunable(CUTOFF) == expected
    assert await store.prune(CUTOFF) == expected
    assert await store.job_deliveries(KEY_A.id, old.id) == []
    assert len(await store.job_deliveries(KEY_A.id, kept.id)) == 2
    assert await backend.execute("SELECT count(*) FROM webhook_attempts") == [(2,)]


async def test_prune_removes_test_deliveries_created_before_the_cutoff(backend: Backend, store: Store) -> None:
    made = await endpoint(store)
    old = await store.create_test_delivery(made, b"{}", now=NOW - 10 * DAY)
    recent = await store.create_test_delivery(made, b"{}", now=NOW)
    await store.claim_deliveries(NOW, 10, 60.0, per_target=8, busy={})
    await store.finish_attempts([result(old.id, FAILED)], disable_after_seconds=DAY * 100)
    cutoff = iso_timestamp(NOW - DAY)
    assert await store.prunable(cutoff) == PruneCounts(deliveries=1)
    assert await store.prune(cutoff, batch_size=1) == PruneCounts(deliveries=1)
    assert await store.get_delivery(KEY_A.id, old.id) is None
    assert await store.get_delivery(KEY_A.id, recent.id) is not None
    assert await backend.execute("SELECT count(*) FROM webhook_attempts") == [(0,)]
