"""POST /webhooks/seedancee2: verified on the raw bytes, deduplicated, applied once; forgeries change nothing."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from structlog.testing import capture_logs

from reelay_signing import sign_header
from sandbox import SANDBOXES
from tests.harness import Stack

SECRET = SANDBOXES["seedancee2"].webhook_secret or ""


def _body(task_id: str, job_id: str, status: str = "completed", **extra: Any) -> bytes:
    data: dict[str, Any] = {"id": task_id, "status": status, "model": "pro", "metadata": {"reelay_job_id": job_id}}
    if status == "completed":
        data["credits_charged"] = 100
        data["output"] = {"video_url": f"https://media.example/{task_id}.mp4", "thumbnail_url": None}
    if status == "failed":
        data["error"] = {"code": "generation_failed", "message": "nope", "type": "generation_error"}
    data.update(extra)
    return msgspec.json.encode({"data": data})


async def _post(stack_: Stack, body: bytes, signature: str | None, **headers: str) -> Any:
    sent = {"Content-Type": "application/json", **headers}
    if signature is not None:
        sent["X-Seedancee2-Signature"] = signature
    return await stack_.client.post(f"{stack_.url}/webhooks/seedancee2", content=body, headers=sent)


async def _pending_job(stack_: Stack, **input: Any) -> dict[str, Any]:
    """A job the provider has accepted but will not finish on its own for a minute."""
    await stack_.sandbox(
        "seedancee2", "PUT", "/_sandbox/knobs", json={"processing_after_s": 60, "complete_after_s": 120}
    )
    return await stack_.accepted((await stack_.submit(**input))["id"])


async def test_signed_webhook_is_applied_and_a_redelivery_changes_nothing(seedance: Stack) -> None:
    job = await _pending_job(seedance)
    body = _body(job["provider_task_id"], job["id"])
    signature = sign_header(body, SECRET, timestamp=int(time.time()))
    first = await _post(seedance, body, signature)
    assert first.status_code == 200
    assert first.json() == {"received": True, "result": "applied"}
    done = await seedance.job(job["id"])
    assert done["status"] == "succeeded"
    assert done["output"]["videos"][0]["url"].endswith(f"{job['provider_task_id']}.mp4")
    for _ in range(3):  # the same delivery again, and re-signed: a provider retry
        again = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
        assert again.status_code == 200
        assert again.json()["result"] == "duplicate"
    assert await seedance.event_types(job["id"]) == ["job.created", "job.submitted", "job.succeeded"]


async def test_a_later_contradicting_webhook_cannot_change_a_finished_job(seedance: Stack) -> None:
    job = await _pending_job(seedance)
    task = job["provider_task_id"]
    for status in ("completed", "failed"):
        body = _body(task, job["id"], status)
        assert (await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))).status_code == 200
    assert (await seedance.job(job["id"]))["status"] == "succeeded"
    assert await seedance.event_types(job["id"]) == ["job.created", "job.submitted", "job.succeeded"]


async def test_forged_tampered_and_stale_webhooks_change_nothing(seedance: Stack) -> None:
    job = await _pending_job(seedance)
    body = _body(job["provider_task_id"], job["id"])
    now = int(time.time())
    tampered = body.replace(b".mp4", b".mp5")
    cases = {
        "missing_header": (body, None),
        "signature_mismatch": (body, sign_header(body, "not-the-secret", timestamp=now)),
        "timestamp_too_old": (body, sign_header(body, SECRET, timestamp=now - 3600)),
        "timestamp_in_future": (body, sign_header(body, SECRET, timestamp=now + 3600)),
    }
    for reason, (payload, signature) in cases.items():
        response = await _post(seedance, payload, signature)
        assert response.status_code == 401, reason
        assert response.json()["error"]["code"] == "invalid_signature"
        assert response.json()["error"]["details"]["reason"] == reason
    response = await _post(seedance, tampered, sign_header(body, SECRET, timestamp=now))
    assert response.status_code == 401
    assert response.json()["error"]["details"]["reason"] == "signature_mismatch"
    assert (await seedance.job(job["id"]))["status"] == "queued"
    assert await seedance.event_types(job["id"]) == ["job.created", "job.submitted"]
    # The forged attempts recorded no receipt: the genuine delivery still applies.
    assert (await _post(seedance, body, sign_header(body, SECRET, timestamp=now))).json()["result"] == "applied"


async def test_webhook_for_an_unknown_task_is_acknowledged_and_ignored(seedance: Stack) -> None:
    body = _body("vid_unknown", "job_01JZ0000000000000000000000")
    response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
    assert response.status_code == 200
    assert response.json()["result"] == "ignored"


async def test_signed_but_unreadable_body_is_a_client_error(seedance: Stack) -> None:
    for body in (b"not json", b'{"data": "x"}', b"[]"):
        response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_request"


async def test_webhook_that_overtakes_the_dispatcher_is_applied_by_job_id(seedance: Stack) -> None:
    """A terminal callback can arrive before Reelay stored the task id; the echoed metadata finds the job."""
    await seedance.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={"latency_s": 1.0, "complete_after_s": 60})
    job = await seedance.submit()
    body = _body("vid_early", job["id"])
    response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
    assert response.json()["result"] == "applied"
    done = await seedance.job(job["id"])
    assert done["status"] == "succeeded"
    assert done["provider_task_id"] == "vid_early"


async def test_webhook_naming_a_job_of_another_task_is_ignored(seedance: Stack) -> None:
    """The job is checked inside the write: a mismatch changes nothing, and the genuine callback still applies."""
    job = await _pending_job(seedance)
    now = int(time.time())
    wrong = _body("vid_someone_else", job["id"])
    response = await _post(seedance, wrong, sign_header(wrong, SECRET, timestamp=now))
    assert response.json()["result"] == "ignored"
    assert (await seedance.job(job["id"]))["status"] == "queued"
    right = _body(job["provider_task_id"], job["id"])
    assert (await _post(seedance, right, sign_header(right, SECRET, timestamp=now))).json()["result"] == "applied"


async def test_webhook_naming_an_unknown_job_is_matched_by_its_task(seedance: Stack) -> None:
    job = await _pending_job(seedance)
    body = _body(job["provider_task_id"], "job_01JZ0000000000000000000000")
    response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
    assert response.json()["result"] == "applied"
    assert (await seedance.job(job["id"]))["status"] == "succeeded"


async def test_a_callback_that_needs_confirmation_records_no_receipt(seedance: Stack) -> None:
    """A completed callback lacks last_frame_url: the status endpoint decides, and a redelivery confirms again."""
    job = await _pending_job(seedance, return_last_frame=True)
    body = _body(job["provider_task_id"], job["id"])
    for _ in range(2):
        response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
        assert response.json()["result"] == "confirming"
    assert await seedance.event_types(job["id"]) == ["job.created", "job.submitted"]


async def test_webhook_naming_a_job_with_a_task_another_job_owns_changes_nothing_and_logs_why(seedance: Stack) -> None:
    """Job ids and task ids are unique together: the signed callback is acknowledged, ignored and explained."""
    owner = await _pending_job(seedance)
    task = owner["provider_task_id"]
    # The second job's create stays in flight, so it has no task id of its own yet.
    slow_create = {"latency_s": 3.0, "processing_after_s": 60, "complete_after_s": 120}
    await seedance.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json=slow_create)
    named = await seedance.submit()
    body = _body(task, named["id"])
    with capture_logs() as logs:
        response = await _post(seedance, body, sign_header(body, SECRET, timestamp=int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "result": "ignored"}
    after = await seedance.job(named["id"])
    assert (after["status"], after["provider_task_id"]) == ("queued", None)
    assert await seedance.event_types(named["id"]) == ["job.created"]
    assert (await seedance.job(owner["id"]))["status"] == "queued"
    reasons = [entry for entry in logs if entry["event"] == "webhook.task_owned_by_another_job"]
    assert reasons == [
        {
            "event": "webhook.task_owned_by_another_job",
            "log_level": "warning",
            "provider": "seedancee2",
            "provider_task_id": task,
            "job_id": named["id"],
            "owner_job_id": owner["id"],
        }
    ]
    # Nothing was recorded for it: the callback meant for the owner still applies.
    right = _body(task, owner["id"])
    applied = await _post(seedance, right, sign_header(right, SECRET, timestamp=int(time.time())))
    assert applied.json()["result"] == "applied"
    assert (await seedance.job(owner["id"]))["status"] == "succeeded"
