"""`reelay listen` as a user runs it: deliveries signed by the `standardwebhooks` package over real HTTP, its
answers, and the line it prints for each."""

from __future__ import annotations

import datetime
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import standardwebhooks

from tests.ports import bind, free_ports

REELAY = str(Path(sys.executable).parent / "reelay")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_b2xkLXNlY3JldC1iZWZvcmUtcm90YXRpb24="
OTHER_SECRET = "whsec_bm90LXRoZS1saXN0ZW5lcnMtc2VjcmV0"


@dataclass
class Listener:
    """A running `reelay listen`: its URL, and its stdout one line at a time."""

    process: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def next_line(self) -> str:
        return self.lines.get(timeout=10)


def start(*args: str) -> Listener:
    port = free_ports(1)
    process = subprocess.Popen(
        [REELAY, "listen", "--port", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in stdout], daemon=True).start()
    return Listener(process, f"http://127.0.0.1:{port}", lines)


@pytest.fixture
def listener() -> Iterator[Listener]:
    """`reelay listen` with the current secret and the one it replaces (a rotation)."""
    running = start("--secret", SECRET, "--secret", OLD_SECRET)
    try:
        assert running.next_line() == (
            f"Ready: receiving on {running.url} (any path), verifying with 2 secret(s). Ctrl-C stops."
        )
        yield running
    finally:
        running.process.kill()
        running.process.wait(10)


def delivery(job_id: str = "job_01", status: str = "succeeded", event_type: str = "job.succeeded") -> bytes:
    """A body in the shape of Reelay's outbound webhooks: the SSE event under `data`."""
    event = {
        "id": 7,
        "type": event_type,
        "created_at": "2026-01-01T00:00:00.000Z",
        "job": {"id": job_id, "status": status},
    }
    return json.dumps({"type": event_type, "timestamp": "2026-01-01T00:00:00.000Z", "data": event}).encode()


def signed(body: bytes, *secrets: str, msg_id: str = "msg_1", age: float = 0) -> dict[str, str]:
    """Standard Webhooks headers made by the reference package, one signature per secret."""
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age)
    signatures = [standardwebhooks.Webhook(secret).sign(msg_id, at, body) for secret in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def columns(line: str) -> list[str]:
    time, *rest = line.split("  ")
    datetime.time.fromisoformat(time)  # HH:MM:SS
    return rest


def test_a_verified_delivery_gets_204_and_one_line(listener: Listener) -> None:
    body = delivery("job_01", "succeeded")
    answer = httpx.post(f"{listener.url}/webhooks/reelay", content=body, headers=signed(body, SECRET))
    assert answer.status_code == 204
    assert columns(listener.next_line()) == ["job.succeeded", "job_01", "succeeded", "verified", "[msg_1]"]


def test_either_secret_of_a_rotation_verifies(listener: Listener) -> None:
    body = delivery("job_02", "failed", "job.failed")
    for secrets in [(OLD_SECRET,), (SECRET, OLD_SECRET)]:
        answer = httpx.post(listener.url, content=body, headers=signed(body, *secrets, msg_id="msg_2"))
        assert answer.status_code == 204
        assert columns(listener.next_line()) == ["job.failed", "job_02", "failed", "verified", "[msg_2]"]


def test_a_delivery_signed_with_another_secret_is_refused_with_its_reason(listener: Listener) -> None:
    body = delivery("job_03")
    answer = httpx.post(listener.url, content=body, headers=signed(body, OTHER_SECRET, msg_id="msg_3"))
    assert answer.status_code == 401
    assert answer.json()["error"]["details"] == {"reason": "signature_mismatch"}
    assert columns(listener.next_line()) == ["job.succeeded", "job_03", "succeeded", "signature_mismatch", "[msg_3]"]


def test_a_stale_delivery_is_refused_with_its_reason(listener: Listener) -> None:
    body = delivery("job_04")
    answer = httpx.post(listener.url, content=body, headers=signed(body, SECRET, msg_id="msg_4", age=600))
    assert answer.status_code == 401
    assert answer.json()["error"]["details"] == {"reason": "timestamp_too_old"}
    assert columns(listener.next_line()) == ["job.succeeded", "job_04", "succeeded", "timestamp_too_old", "[msg_4]"]


def test_a_tampered_body_is_refused(listener: Listener) -> None:
    body = delivery("job_05")
    answer = httpx.post(listener.url, content=body.replace(b"job_05", b"job_06"), headers=signed(body, SECRET))
    assert answer.status_code == 401
    assert columns(listener.next_line()) == ["job.succeeded", "job_06", "succeeded", "signature_mismatch", "[msg_1]"]


def test_a_request_that_is_no_delivery_gets_a_line_of_dashes(listener: Listener) -> None:
    answer = httpx.get(listener.url)
    assert answer.status_code == 401
    assert columns(listener.next_line()) == ["-", "-", "-", "missing_header"]


def test_what_an_unverified_body_claims_cannot_write_to_the_terminal(listener: Listener) -> None:
    body = delivery("\x1b]0;owned\x07job", "x" * 200, "job.\x1b[31msucceeded")
    answer = httpx.post(listener.url, content=body, headers=signed(body, OTHER_SECRET))
    assert answer.status_code == 401
    line = listener.next_line()
    assert "\x1b" not in line
    assert "\x07" not in line
    assert columns(line) == [
        "job.\\x1b[31msucceeded",
        "\\x1b]0;owned\\x07job",
        "x" * 80 + "…",
        "signature_mismatch",
        "[msg_1]",
    ]


def test_sigterm_stops_it_cleanly(listener: Listener) -> None:
    listener.process.send_signal(signal.SIGTERM)
    assert listener.process.wait(10) == 0


def test_a_secret_that_is_not_base64_is_refused_at_start() -> None:
    result = subprocess.run([REELAY, "listen", "--secret", "whsec_not base64!"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Invalid value for --secret: A whsec_ secret must be base64 of the key." in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_one_line() -> None:
    busy = bind()
    busy.listen()
    port = busy.getsockname()[1]
    try:
        result = subprocess.run(
            [REELAY, "listen", "--port", str(port), "--secret", SECRET], capture_output=True, text=True, timeout=30
        )
    finally:
        busy.close()
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
