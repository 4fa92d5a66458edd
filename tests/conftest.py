from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests import pg, s3
from tests.harness import Stack, stack


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """The PostgreSQL server of the session, started on first use (see tests/pg.py)."""
    with pg.postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """An S3-compatible server (moto) for the session, started on first use (see tests/s3.py)."""
    with s3.s3_server() as server:
        yield server


@pytest.fixture
async def seedance(tmp_path: Path) -> AsyncIterator[Stack]:
    """Reelay plus the Seedancee2 emulator, over real HTTP on loopback."""
    async with stack(tmp_path) as running:
        yield running


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that call `configure_logging`: its renderers hold the test's captured stderr, and later tests
    must not write to it."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []
