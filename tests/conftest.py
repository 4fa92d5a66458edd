from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.harness import Stack, stack


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer]:
    """The PostgreSQL server of the session, started on first use (see tests/pg.py)."""
    with pg.postgres_server() as server:
        yield server


@pytest.fixture
async def seedance(tmp_path: Path) -> AsyncIterator[Stack]:
    """Reelay plus the Seedancee2 emulator, over real HTTP on loopback."""
    async with stack(tmp_path) as running:
        yield running
