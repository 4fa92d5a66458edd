"""An S3-compatible server for tests: moto in server mode (the dev extras install it), on a free loopback port.

It stands in for S3 the way the emulators stand in for the providers. Each test gets a bucket of its own
(`S3Server.bucket`), so tests sharing the session's server never see each other's objects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.ports import free_ports

# moto checks no signature; any non-empty credentials do.
ACCESS_KEY_ID = "reelay-test"
SECRET_ACCESS_KEY = "reelay-test-secret"
REGION = "us-east-1"


class S3Server:
    """A running S3-compatible server at `endpoint_url`."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url

    def bucket(self) -> str:
        """A new empty bucket's name."""
        name = "reelay-" + uuid.uuid4().hex[:12]
        httpx.put(f"{self.endpoint_url}/{name}", timeout=10).raise_for_status()
        return name

    def environ(self, bucket: str, prefix: str = "assets") -> dict[str, str]:
        """The variables that point Reelay's asset store at `bucket`."""
        return {
            "REELAY_ASSETS": f"s3://{bucket}/{prefix}",
            "REELAY_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's server, started on a free loopback port and stopped at the end of the block."""
    port = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Killed before its finally block runs, this process would leave the server running: a watchdog outside its
    # process group stops it once this process is gone.
    watchdog = subprocess.Popen(
        ["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {server.pid} 2>/dev/null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    stderr = server.stderr.read().decode(errors="replace") if server.stderr else ""
                    pytest.fail(f"moto server did not start on {endpoint}:\n{stderr}", pytrace=False)
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr:
            server.stderr.close()
        watchdog.kill()
        watchdog.wait()
