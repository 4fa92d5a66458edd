"""`reelay dev` as a new user runs it: it prints a key and a curl line, and a seedancee2/pro job succeeds
within about 10 s and shows on the event stream."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.sandbox import SANDBOXES
from tests.ports import bind, free_ports

REELAY = str(Path(sys.executable).parent / "reelay")


async def test_reelay_dev_runs_a_job_to_success(tmp_path: Path) -> None:
    port = free_ports(1 + len(SANDBOXES))
    sandbox_port = port + 1
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                REELAY,
                "dev",
                "--port",
                str(port),
                "--sandbox-port",
                str(sandbox_port),
                "--data-dir",
                str(tmp_path / "var"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with asyncio.timeout(20):
            while not (match := re.search(r"API key \(shown once\): (rlk_\S+)", log.read_text())):
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
        key = match.group(1)
        printed = log.read_text()
        assert f"curl -N http://127.0.0.1:{port}/v1/events" in printed
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        events: list[dict[str, object]] = []
        async with (
            httpx.AsyncClient(timeout=15) as client,
            client.stream("GET", f"{url}/v1/events", headers=headers) as stream,
        ):
            started = asyncio.get_running_loop().time()
            response = await client.post(
                f"{url}/v1/jobs",
                headers=headers,
                json={"model": "seedancee2/pro", "input": {"prompt": "waves on black rocks", "duration": 5}},
            )
            assert response.status_code == 202
            async with asyncio.timeout(12):
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line.removeprefix("data: ")))
                        if events[-1]["type"] == "job.succeeded":
                            break
            elapsed = asyncio.get_running_loop().time() - started
        assert [e["type"] for e in events] == ["job.created", "job.submitted", "job.succeeded"]
        assert elapsed < 10
        assert (tmp_path / "var" / "reelay-dev.db").exists()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0, log.read_text()[-2000:]


def _dev(tmp_path: Path, port: int, sandbox_port: int) -> subprocess.CompletedProcess[str]:
    args = ["dev", "--port", str(port), "--sandbox-port", str(sandbox_port), "--data-dir", str(tmp_path / "var")]
    return subprocess.run([REELAY, *args], capture_output=True, text=True, timeout=30)


def test_a_busy_port_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    port = free_ports(1 + len(SANDBOXES))
    busy = bind(port + 3)
    busy.listen()
    try:
        result = _dev(tmp_path, port, port + 1)
    finally:
        busy.close()
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port + 3}: Address already in use; "
        "pick free ports with --port and --sandbox-port"
    )
    assert not (tmp_path / "var").exists()  # no database, no key made for a server that never ran


def test_a_port_inside_the_emulators_range_is_refused(tmp_path: Path) -> None:
    port = free_ports(len(SANDBOXES))
    result = _dev(tmp_path, port + 2, port)
    assert result.returncode == 2
    assert f"--port {port + 2} is one of the emulators' ports {port}-{port + len(SANDBOXES) - 1}" in result.stderr
    assert "Traceback" not in result.stderr
