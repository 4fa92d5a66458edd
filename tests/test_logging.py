"""Logs: JSON lines with bound job_id / provider / request_id, and never a secret or a raw webhook body."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import msgspec
import pytest

from reelay_signing import sign_header
from sandbox import SANDBOXES
from service.ids import split_api_key
from service.logging import configure_logging
from tests.harness import stack

pytestmark = pytest.mark.usefixtures("restore_logging")


async def test_no_secret_or_raw_body_reaches_the_logs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    secret = SANDBOXES["seedancee2"].webhook_secret
    assert secret is not None
    async with stack(tmp_path) as running:
        job = await running.submit()
        done = await running.wait_for(job["id"], {"succeeded"})
        other = await running.submit()
        await running.wait_for(other["id"], {"succeeded"})
        # A signed webhook whose body carries a marker that must never be logged.
        body = msgspec.json.encode(
            {
                "data": {
                    "id": done["provider_task_id"],
                    "status": "completed",
                    "output": {"video_url": "https://cdn.example/BODY-MARKER-7f3a.mp4"},
                    "metadata": {"reelay_job_id": job["id"]},
                }
            }
        )
        signature = sign_header(body, secret, timestamp=int(time.time()))
        hook = f"{running.url}/webhooks/seedancee2"
        assert (
            await running.client.post(hook, content=body, headers={"X-Seedancee2-Signature": signature})
        ).status_code == 200
        forged = signature.replace("v1=", "v1=0")
        assert (
            await running.client.post(hook, content=body, headers={"X-Seedancee2-Signature": forged})
        ).status_code == 401
        wrong_key = running.key[:-4] + "AAAA"
        assert (await running.client.get(f"{running.url}/v1/jobs", headers={"x-api-key": wrong_key})).status_code == 401
        api_key = running.key
    out, err = capfd.readouterr()
    logs = out + err
    lines = [line for line in logs.splitlines() if line.startswith("{")]
    assert len(lines) > 10
    for forbidden in (
        api_key,
        (split_api_key(api_key) or ("", api_key))[1],  # the key's secret part
        wrong_key,
        secret,
        SANDBOXES["seedancee2"].api_key,
        signature,
        forged,
        "BODY-MARKER-7f3a",
        body.decode(),
    ):
        assert forbidden not in logs, forbidden
    records = [json.loads(line) for line in lines]
    assert all({"event", "level", "timestamp"} <= r.keys() for r in records)
    job_lines = [r for r in records if r["event"] in {"job.created", "job.submitted", "webhook.received"}]
    assert job_lines
    assert all(r.get("job_id") and r.get("provider") == "seedancee2" for r in job_lines)
    requests = [r for r in records if r["event"] == "http.request"]
    assert requests
    assert all(r.get("request_id") for r in requests)
    assert any(r["event"] == "webhook.rejected" and r.get("reason") == "signature_mismatch" for r in records)


def _controls_in(text: str) -> set[str]:
    """The C0 (but line feed), DEL and C1 characters in `text`: what a terminal would obey."""
    return {c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)}


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_access_log_redacts_callback_tokens_and_token_query_values(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure_logging(log_format, "info")
    # Minuit (unsigned) and Magnific (signed) both call back on per-job URLs that carry the job's token.
    models = {"minuit": "minuit/high_quality", "magnific": "magnific/seedance-2-mini"}
    async with stack(tmp_path, providers=tuple(models)) as running:
        jobs = {provider: await running.submit(model=model) for provider, model in models.items()}
        tokens = {}
        for provider, job in jobs.items():
            await running.wait_for(job["id"], {"succeeded"})
            tokens[provider] = (await running.store.get_job(job["id"])).callback_token
        secret_query = {"token": "stream-TOKEN-5be1", "sig": "asset-SIG-9c0d", "limit": "3"}
        await running.client.get(f"{running.url}/healthz", params=secret_query)
    logs = capfd.readouterr().err
    for provider, token in tokens.items():
        assert token not in logs
        assert f"/webhooks/{provider}/{jobs[provider]['id']}/[redacted]" in logs  # the callback was logged
    assert "stream-TOKEN-5be1" not in logs
    assert "asset-SIG-9c0d" not in logs
    assert "token=[redacted]&sig=[redacted]&limit=3" in logs


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_control_characters_in_request_paths_are_escaped_in_logs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure_logging(log_format, "info")
    # A job id that clears the screen and sets the title, then NUL, DEL and CSI (C1).
    path = "/v1/jobs/%1b%5b2J%1b%5d0;owned%07%00%7f%c2%9b-end"
    async with stack(tmp_path) as running:
        response = await running.client.get(running.url + path, headers=running.headers)
        assert response.status_code == 404  # a route with a job id: it reaches the access log
    logs = capfd.readouterr().err
    line = next(line for line in logs.splitlines() if "-end" in line)
    assert not _controls_in(logs)
    if log_format == "json":
        assert json.loads(line)["path"] == "/v1/jobs/\x1b[2J\x1b]0;owned\x07\x00\x7f\x9b-end"
    else:
        assert "path=/v1/jobs/\\x1b[2J\\x1b]0;owned\\x07\\x00\\x7f\\x9b-end" in line


async def test_every_terminal_transition_logs_one_line_whatever_moved_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    async with stack(tmp_path, providers=("seedancee2", "mindvideo")) as running:
        by_webhook = await running.submit()
        by_poll = await running.submit(model="mindvideo/doubao-seedance-2-0-fast")
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={"failure_rate": 1.0})
        failed_by_webhook = await running.submit()
        await running.sandbox("seedancee2", "PUT", "/_sandbox/knobs", json={"complete_after_s": 60})
        cancelled = await running.accepted((await running.submit())["id"])
        response = await running.client.post(f"{running.url}/v1/jobs/{cancelled['id']}/cancel", headers=running.headers)
        assert response.status_code == 200
        for job, status in ((by_webhook, "succeeded"), (by_poll, "succeeded"), (failed_by_webhook, "failed")):
            await running.wait_for(job["id"], {status}, timeout=20)
    records = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]

    def terminal_lines(job_id: str) -> list[dict[str, object]]:
        finished = {"job.succeeded", "job.failed", "job.cancelled"}
        return [r for r in records if r["event"] in finished and r.get("job_id") == job_id]

    def moved_by_webhook(job_id: str, status: str) -> bool:
        return any(
            r["event"] == "webhook.received" and r.get("job_id") == job_id and r.get("status") == status
            for r in records
        )

    assert moved_by_webhook(by_webhook["id"], "succeeded")
    assert moved_by_webhook(failed_by_webhook["id"], "failed")
    expected = [
        (by_webhook, "job.succeeded", "seedancee2/pro"),
        (by_poll, "job.succeeded", "mindvideo/doubao-seedance-2-0-fast"),
        (failed_by_webhook, "job.failed", "seedancee2/pro"),
        (cancelled, "job.cancelled", "seedancee2/pro"),
    ]
    for job, event, model in expected:
        [line] = terminal_lines(job["id"])
        assert line["event"] == event
        assert line["model"] == model
        assert line["provider"] == model.split("/")[0]
    [failure] = terminal_lines(failed_by_webhook["id"])
    assert failure["error_code"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_library_log_lines_and_tracebacks_are_redacted_and_escaped(
    capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure_logging(log_format, "info")
    url = "http://127.0.0.1/webhooks/minuit/job_01/cb-TOKEN-77e2?sig=asset-SIG-31aa"
    try:
        raise ValueError(f"bad answer from {url}\x1b[2J")
    except ValueError:
        # What uvicorn's error logger prints for a failing request (its access log is off).
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application %s\x1b]0;owned\x07", url)
    logs = capfd.readouterr().err
    assert "cb-TOKEN-77e2" not in logs
    assert "asset-SIG-31aa" not in logs
    assert logs.count("/webhooks/minuit/job_01/[redacted]?sig=[redacted]") == 2  # the message and the traceback
    assert not _controls_in(logs)
