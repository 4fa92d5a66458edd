"""A PostgreSQL server for tests: the one REELAY_TEST_POSTGRES_URL names, or a throwaway cluster started here.

Every test gets an empty schema of its own on it (see PostgresServer.database), dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from tests.ports import free_ports

URL_VARIABLE = "REELAY_TEST_POSTGRES_URL"
BINARIES = "/usr/lib/postgresql/*/bin"
MISSING = (
    f"no PostgreSQL server binaries in {BINARIES}: run .ci/run (its .ci/postgres.sh installs Debian's "
    f"postgresql package), or set {URL_VARIABLE} to a database the tests may create schemas in"
)


class PostgresServer:
    """A server the tests may create and drop schemas on, reached through `admin_url`."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    @asynccontextmanager
    async def database(self) -> AsyncIterator[str]:
        """A URL that sees an empty database of its own, dropped (whatever is still connected) afterwards.

        It is a schema of the server's database, named by the URL's search_path: a store cannot tell it from
        a database, and it costs milliseconds where CREATE DATABASE costs a tenth of a second.
        """
        name = "reelay_test_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f"CREATE SCHEMA {name}")
        finally:
            await admin.close()
        parts = urlsplit(self.admin_url)
        query = urlencode([*parse_qsl(parts.query), ("search_path", name)])
        try:
            yield urlunsplit(parts._replace(query=query))
        finally:
            admin = await asyncpg.connect(self.admin_url)
            try:
                # A store a failing test left open holds no lock that would block this: it is idle.
                await admin.execute(f"DROP SCHEMA {name} CASCADE")
            finally:
                await admin.close()


def server_binaries() -> Path | None:
    """The bin folder of the newest PostgreSQL installed from Debian's packages, if any."""
    found = [Path(p) for p in glob.glob(BINARIES) if (Path(p) / "postgres").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace") if log is not None and log.exists() else ""
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{server_log}", pytrace=False)


@contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[PostgresServer]:
    """initdb into a temporary folder, start the server on a free loopback port, and remove it all at the end.

    Tests trade durability for speed (fsync, synchronous_commit and full_page_writes off); `durable` keeps the
    server's defaults, for benchmarks whose numbers must include the cost of a commit.
    """
    binaries = server_binaries()
    if binaries is None:
        pytest.fail(MISSING, pytrace=False)
    home = Path(tempfile.mkdtemp(prefix="reelay-pg-"))
    data, log = home / "data", home / "server.log"
    # initdb and postgres refuse to run as root; run them as the postgres OS user, who must own the folder.
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = free_ports(1)
    options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={home} -c max_connections=200"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    stop = [*as_owner, str(binaries / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)]
    # Killed before its finally blocks run (SIGKILL, SIGTERM, a CI timeout), this process would leave the server
    # running: a watchdog outside its process group stops the server and removes the folder once it is gone.
    watchdog = subprocess.Popen(
        [
            "sh",
            "-c",
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
            f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(home))}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
        _run([*as_owner, *initdb, "-E", "UTF8", "--no-locale"], "initdb")
        start = [str(binaries / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)]
        _run([*as_owner, *start, "-o", options], "pg_ctl start", log)
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    finally:
        with suppress(subprocess.SubprocessError):
            subprocess.run(stop, capture_output=True, timeout=60, check=False)
        shutil.rmtree(home, ignore_errors=True)
        watchdog.kill()
        watchdog.wait()


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The server named by REELAY_TEST_POSTGRES_URL, or else a throwaway cluster for as long as the block runs."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield PostgresServer(url)
        return
    with throwaway_cluster() as server:
        yield server
