"""Storage fixtures: every contract test runs once per backend named in BACKENDS."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage import Clock, Store, create_store
from storage.base import JobEncoder
from tests import pg
from tests.storage.factories import KEY_A, KEY_B, encode_snapshot

BACKENDS = ["sqlite", "postgresql"]


class Backend:
    """One empty database of one backend, and the few backend-specific things tests need."""

    name: str
    url: str
    private_columns: dict[str, set[str]] = {}
    """Columns a backend keeps beyond the fields of the records, by table (tables of its own included)."""

    def new_store(
        self, encode_job: JobEncoder = encode_snapshot, clock: Clock = time.time, first_delivery_delay: float = 0.0
    ) -> Store:
        """A new, unopened store on this database."""
        return create_store(self.url, encode_job, clock=clock, first_delivery_delay=first_delivery_delay)

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


class PostgresBackend(Backend):
    name = "postgresql"
    # Replicas share the jobs table, so a lease records which store instance holds it; and they share the per-key
    # limits (SQLite counts those in the process).
    private_columns = {
        "jobs": {"lease_owner"},
        "webhook_deliveries": {"lease_owner"},
        "rate_buckets": {"api_key_id", "tokens", "at", "allowed"},
        "provider_rates": {"provider", "tokens", "at", "paused_until", "creates_until", "granted"},
        "stream_slots": {"api_key_id", "id", "owner", "expires_at"},
    }

    def __init__(self, url: str) -> None:
        self.url = url

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    async def tables(self) -> dict[str, set[str]]:
        rows = await self.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        )
        found: dict[str, set[str]] = {}
        for table, column in rows:
            found.setdefault(table, set()).add(column)
        return found

    async def indexes(self) -> set[str]:
        rows = await self.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND NOT i.indisprimary"
        )
        return {name for (name,) in rows}


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path)
        return
    server: pg.PostgresServer = request.getfixturevalue("postgres_server")
    async with server.database() as url:
        yield PostgresBackend(url)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store holding KEY_A and KEY_B."""
    opened = backend.new_store()
    await opened.open()
    await opened.create_api_key(KEY_A)
    await opened.create_api_key(KEY_B)
    yield opened
    await opened.close()
