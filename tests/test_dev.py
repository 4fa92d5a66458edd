"""`reelay dev` as a new user runs it: it prints a key, an `export KEY=` line and a curl line, a seedancee2/pro
job succeeds within about 10 s and shows on the event stream, and `reelay keys` in the same folder manages its keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sandbox import SANDBOXES
from service.dev import dev_settings
from service.ids import split_api_key
from tests.ports import bind, free_ports

REELAY = str(Path(sys.executable).parent / "reelay")


def _fresh_clone_env() -> dict[str, str]:
    """The environment of a new user: no REELAY_* variable set, so every command uses the default database."""
    return {name: value for name, value in os.environ.items() if not name.startswith("REELAY_")}


@asynccontextmanager
async def _reelay_dev(folder: Path) -> AsyncIterator[tuple[str, str, str]]:
    """`reelay dev` run in `folder` as the README says; yields its URL, the API key its banner printed, and the
    banner."""
    port = free_ports(1 + len(SANDBOXES))
    log = folder / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [REELAY, "dev", "--port", str(port), "--sandbox-port", str(port + 1)],
            cwd=folder,
            env=_fresh_clone_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with asyncio.timeout(20):
            while not (match := re.search(r"API key \(shown once\): (rlk_\S+)", log.read_text())):
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}", match.group(1), log.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0, log.read_text()[-2000:]


def _reelay(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REELAY, *args], cwd=folder, env=_fresh_clone_env(), capture_output=True, text=True, timeout=60
    )


async def test_reelay_dev_prints_an_export_key_line_and_runs_a_job_to_success(tmp_path: Path) -> None:
    async with _reelay_dev(tmp_path) as (url, key, printed):
        assert f"curl -N {url}/v1/events" in printed
        assert f"\n  export KEY={key}\n" in printed  # the README's examples use $KEY
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


async def test_reelay_dev_ships_an_example_route_and_its_banners_curl_creates_a_job_on_it(tmp_path: Path) -> None:
    async with _reelay_dev(tmp_path) as (url, key, printed):
        [curl] = re.findall(r"^  (curl .*seedance-2\.0-fast.*)$", printed, re.MULTILINE)
        created = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30, check=True)
        job = json.loads(created.stdout)
        async with httpx.AsyncClient(timeout=10) as client:
            models = (await client.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})).json()
    assert (
        "route seedance-2.0-fast (it fails over in order: seedancee2/fast → mindvideo/doubao-seedance-2-0-fast)"
        in printed
    )
    assert (job["model"], job["routed_model"]) == ("seedance-2.0-fast", "seedancee2/fast")
    [route] = models["routes"]
    assert [c["model"] for c in route["candidates"]] == ["seedancee2/fast", "mindvideo/doubao-seedance-2-0-fast"]
    assert all(c["available"] for c in route["candidates"])


async def test_reelay_keys_list_shows_the_key_reelay_dev_printed_and_a_created_key_works_against_it(
    tmp_path: Path,
) -> None:
    async with _reelay_dev(tmp_path) as (url, key, _):
        listed = _reelay(tmp_path, "keys", "list")  # plain, no flags, from the same folder, while dev runs
        assert listed.returncode == 0, listed.stderr
        key_id = (split_api_key(key) or ("", ""))[0]
        shown = rf"^{key_id}\s+reelay-dev\s.*\sactive\s+no budget$"
        assert re.search(shown, listed.stdout, re.MULTILINE), listed.stdout
        assert f"database: {tmp_path / 'var' / 'reelay.db'}" in listed.stderr
        created = _reelay(tmp_path, "keys", "create", "--name", "second", "--json")
        assert created.returncode == 0, created.stderr
        new_key = json.loads(created.stdout)["key"]
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {new_key}"})
        assert response.status_code == 200


def _dev(tmp_path: Path, port: int, sandbox_port: int) -> subprocess.CompletedProcess[str]:
    return _reelay(tmp_path, "dev", "--port", str(port), "--sandbox-port", str(sandbox_port))


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


async def test_the_banners_reelay_listen_line_receives_a_jobs_verified_webhook(tmp_path: Path) -> None:
    async with _reelay_dev(tmp_path) as (url, key, printed):
        match = re.search(r"\n  reelay listen --port 9000 --secret (whsec_\S+)\n", printed)
        assert match is not None, printed
        listen_port = free_ports(1)
        out = tmp_path / "listen.log"
        with out.open("wb") as sink:
            listener = subprocess.Popen(
                [REELAY, "listen", "--port", str(listen_port), "--secret", match.group(1)],
                env=_fresh_clone_env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                async with asyncio.timeout(10):
                    while listener.poll() is None:  # until it answers
                        try:
                            await client.get(f"http://127.0.0.1:{listen_port}/")
                            break
                        except httpx.TransportError:
                            await asyncio.sleep(0.1)
                response = await client.post(
                    f"{url}/v1/jobs",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "seedancee2/pro",
                        "input": {"prompt": "waves on black rocks", "duration": 5},
                        "webhook_url": f"http://127.0.0.1:{listen_port}/",
                    },
                )
                assert response.status_code == 202, response.text
                job_id = response.json()["id"]
            async with asyncio.timeout(15):
                while not re.search(rf"job\.succeeded\s+{job_id}\s+succeeded\s+verified", out.read_text()):
                    assert listener.poll() is None, out.read_text()
                    await asyncio.sleep(0.1)
        finally:
            listener.send_signal(signal.SIGINT)
            listener.wait(10)


def test_reelay_dev_ships_no_example_route_when_routes_are_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELAY_ROUTES", '{"mine": {"strategy": "cheapest", "candidates": ["seedancee2/mini"]}}')
    assert list(dev_settings(8000, 8001).routes) == ["mine"]
    monkeypatch.delenv("REELAY_ROUTES")
    assert list(dev_settings(8000, 8001).routes) == ["seedance-2.0-fast"]


async def test_reelay_dev_archives_a_jobs_video_into_var_assets_and_the_banners_curl_downloads_it(
    tmp_path: Path,
) -> None:
    async with _reelay_dev(tmp_path) as (url, key, printed):
        line = next(line for line in printed.splitlines() if "curl -o video.mp4" in line)
        content_url = re.search(r"'(http[^']+)'", line)
        assert content_url is not None
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.post(
                f"{url}/v1/jobs",
                headers=headers,
                json={"model": "seedancee2/pro", "input": {"prompt": "waves on black rocks", "duration": 5}},
            )
            job_id = response.json()["id"]
            async with asyncio.timeout(15):
                while True:
                    job = (await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)).json()
                    if "assets" in (job["output"] or {}):
                        break
                    await asyncio.sleep(0.2)
            download = await client.get(content_url.group(1).replace("JOB_ID", job_id), headers=headers)
    video = next(a for a in job["output"]["assets"] if a["variant"] == "video")
    on_disk = (tmp_path / "var" / "assets" / job_id / "video-0").read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == video["sha256"]
    assert download.status_code == 200
    assert download.content == on_disk
