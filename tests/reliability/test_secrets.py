"""After a full run across every provider, no secret, key or raw webhook body appears in the logs, in
any response body or header, or in /metrics."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import msgspec
import pytest

from reelay_signing import sign_header, sign_headers
from sandbox import SANDBOXES, SandboxKnobs
from service.ids import split_api_key
from service.logging import configure_logging
from tests.harness import stack

MODELS = [
    ("seedancee2/pro", {}),
    ("minuit/high_quality", {}),
    ("mindvideo/doubao-seedance-2-0-fast", {}),
    ("imini/doubao/seedance-2.0", {}),
    ("magnific/seedance-2-mini", {"duration": 5}),
]


pytestmark = pytest.mark.usefixtures("restore_logging")


async def test_no_secret_in_logs_responses_or_metrics(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    seen: list[str] = []

    async def record(response: httpx.Response) -> None:
        await response.aread()
        seen.append(str(response.headers))
        seen.append(response.text)

    knobs = SandboxKnobs(processing_after_s=0.05, complete_after_s=0.3)
    async with (
        httpx.AsyncClient(timeout=10, event_hooks={"response": [record]}) as observed,
        stack(tmp_path, knobs=knobs, providers=tuple(SANDBOXES), callback_grace_seconds=1.0) as s,
    ):
        headers = s.headers
        for model, extra in MODELS:
            response = await observed.post(
                f"{s.url}/v1/jobs", json={"model": model, "input": {"prompt": "p", **extra}}, headers=headers
            )
            assert response.status_code == 202, response.text
            await s.wait_for(response.json()["id"], {"succeeded", "failed"}, timeout=20)
        # Failures a secret could leak through: bad keys, bad signatures, bad bodies.
        wrong_key = s.key[:-6] + "AAAAAA"
        await observed.get(f"{s.url}/v1/jobs", headers={"Authorization": f"Bearer {wrong_key}"})
        body = msgspec.json.encode({"data": {"id": "vid_x", "status": "completed", "note": "RAW-BODY-MARKER-41"}})
        secret = SANDBOXES["seedancee2"].webhook_secret or ""
        signature = sign_header(body, secret, timestamp=int(time.time()))
        forged = sign_header(body, "guessed-secret", timestamp=int(time.time()))
        for sig in (signature, forged):
            await observed.post(f"{s.url}/webhooks/seedancee2", content=body, headers={"X-Seedancee2-Signature": sig})
        magnific_secret = SANDBOXES["magnific"].webhook_secret or ""
        standard = sign_headers(body, magnific_secret, msg_id="msg_leak", timestamp=int(time.time()))
        await observed.post(f"{s.url}/webhooks/magnific", content=body, headers=standard)
        await observed.post(
            f"{s.url}/v1/jobs", content=b'{"model": "x", "input": {"prompt": "RAW-BODY-MARKER-41"', headers=headers
        )
        await observed.get(f"{s.url}/metrics")
        api_key = s.key
    out, err = capfd.readouterr()
    haystacks = {"logs": out + err, "responses": "\n".join(seen)}
    secrets = {
        "api key": api_key,
        "api key secret": (split_api_key(api_key) or ("", "unsplittable"))[1],
        "wrong key": wrong_key,
        "seedancee2 signature": signature,
        "forged signature": forged,
        "standard signature": standard["webhook-signature"],
        "raw webhook body": "RAW-BODY-MARKER-41",
    }
    for name, spec in SANDBOXES.items():
        secrets[f"{name} api key"] = spec.api_key
        if spec.webhook_secret:
            secrets[f"{name} webhook secret"] = spec.webhook_secret
    assert len(haystacks["logs"]) > 1000
    assert "reelay_http_requests_total" in haystacks["responses"]  # /metrics was scanned
    for where, text in haystacks.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} found in {where}"
