"""`reelay` as real processes for tests: environment, key creation, start, readiness."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sandbox import SANDBOXES

REELAY = str(Path(sys.executable).parent / "reelay")


def reelay_env(tmp_path: Path, port: int, sandbox_urls: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment for `reelay` on `port`, with the given providers pointed at their emulators."""
    env = {
        **os.environ,
        "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'reelay.db'}",
        "REELAY_PORT": str(port),
        "REELAY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REELAY_LOG_LEVEL": "warning",
        "REELAY_ASSETS": "off",  # a test that archives names its own store
        **extra,
    }
    for name, url in sandbox_urls.items():
        spec = SANDBOXES[name]
        prefix = f"REELAY_{name.upper()}_"
        env[prefix + "BASE_URL"] = url
        env[prefix + "API_KEY"] = spec.api_key
        if spec.webhook_secret:
            env[prefix + "WEBHOOK_SECRET"] = spec.webhook_secret
        for option, value in spec.options.items():
            env[prefix + option.upper()] = value
    return env


def create_key(env: dict[str, str]) -> str:
    result = subprocess.run(
        [REELAY, "keys", "create", "--name", "test", "--json"], env=env, capture_output=True, check=True
    )
    key: str = json.loads(result.stdout)["key"]
    return key


@contextmanager
def reelay_serve(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`reelay serve` in the background; killed if the test leaves it running."""
    with log.open("ab") as out:
        process = subprocess.Popen([REELAY, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def start_role(env: dict[str, str], role: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`reelay serve --role <role>` on `port`; the caller stops it."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [REELAY, "serve", "--role", role, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_ready(client: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(20):
        while True:
            assert process.poll() is None, "reelay exited during start-up"
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
