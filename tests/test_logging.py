"""Logs: JSON lines with bound job_id / provider / request_id, and never a secret or a raw webhook body."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from service.ids import split_api_key
from service.logging import configure_logging
from service.sandbox import SANDBOXES
from service.signing import sign_header
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
