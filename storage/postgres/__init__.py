"""The PostgreSQL backend: the store (`store`), the event log shared by replicas and its LISTEN feed (`feed`),
the SQL of the shared write steps (`steps`) and asyncpg errors translated at the edge (`errors`)."""

from __future__ import annotations

from storage.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
