"""An S3-compatible server for tests: the one REELAY_TEST_S3_ENDPOINT_URL names (with the AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY of the environment, if set), or else moto in server mode (the dev extras install it) on a free
loopback port.

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

URL_VARIABLE = "REELAY_TEST_S3_ENDPOINT_URL"
# moto checks no signature; any non-empty credentials do.
ACCESS_KEY_ID = "reelay-test"
SECRET_ACCESS_KEY = "reelay-test-secret"
REGION = "us-east-1"


class S3Server:
    """A running S3-compatible server at `endpoint_url`."""

    def __init__(self, endpoint_url: str, access_key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> None:
        self.endpoint_url = endpoint_url
        self.access_key_id = access_key_id
        self.secret_access_key = secret

    def bucket(self) -> str:
        """A new empty bucket's name."""
        import boto3  # moto's dependency; imported here, so a session that needs no S3 server does not load it

        name = "reelay-" + uuid.uuid4().hex[:12]
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )
        client.create_bucket(Bucket=name)
        client.close()
        return name

    def environ(self, bucket: str, prefix: str = "assets") -> dict[str, str]:
        """The variables that point Reelay's asset store at `bucket`."""
        return {
            "REELAY_ASSETS": f"s3://{bucket}/{prefix}",
            "REELAY_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
        }


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """The server REELAY_TEST_S3_ENDPOINT_URL names, or else moto's, started on a free loopback port and stopped at
    the end of the block."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield S3Server(
            url.rstrip("/"),
            os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        )
        return
    with moto_server() as server:
        yield server


@contextmanager
def moto_server() -> Iterator[S3Server]:
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
