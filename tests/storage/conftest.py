"""Storage fixtures: every contract test runs once per backend named in BACKENDS."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from storage import Store, create_store
from storage.base import JobEncoder
from tests.storage.factories import KEY_A, KEY_B, encode_snapshot

BACKENDS = ["sqlite"]  # add "postgresql" here, and its Backend to _BUILDERS, once storage has it


class Backend:
    """One empty database of one backend, and the few backend-specific things tests need."""

    name: str
    url: str

    def new_store(self, encode_job: JobEncoder = encode_snapshot) -> Store:
        """A new, unopened store on this database."""
        return create_store(self.url, encode_job)

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL on a connection of its own, outside any store, and commit."""
        raise NotImplementedError

    async def tables(self) -> dict[str, set[str]]:
        """Each table of the schema with its column names (the engine's own tables left out)."""
        raise NotImplementedError

    async def indexes(self) -> set[str]:
        """Names of the indexes the migrations declare (not those behind primary keys)."""
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "reelay.db"
        self.url = f"sqlite:///{self.path}"

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as conn:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows

    async def tables(self) -> dict[str, set[str]]:
        rows = await self.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
        return {name: {c[1] for c in await self.execute(f"PRAGMA table_info({name})")} for (name,) in rows}

    async def indexes(self) -> set[str]:
        rows = await self.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        return {name for (name,) in rows}


_BUILDERS: dict[str, Callable[[Path], Backend]] = {"sqlite": SqliteBackend}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _BUILDERS[request.param](tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store holding KEY_A and KEY_B."""
    opened = backend.new_store()
    await opened.open()
    await opened.create_api_key(KEY_A)
    await opened.create_api_key(KEY_B)
    yield opened
    await opened.close()
