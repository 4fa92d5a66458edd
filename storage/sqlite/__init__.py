"""The SQLite backend: the store (`store`), its group-commit writer (`writer`), the SQL of the shared write
steps (`steps`), file backups (`backup`) and sqlite3 errors translated at the edge (`errors`)."""

from __future__ import annotations

from storage.sqlite.store import SqliteStore, sqlite_path

__all__ = ["SqliteStore", "sqlite_path"]
