"""Secrets the service makes for itself (the signers of asset URLs and stream tokens): one row each, stored by
whichever process asks first, so every replica on the database uses the same one."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from storage.webhooks import Sql

_T = TypeVar("_T")


async def stored_secret(db: Sql, name: str, new_value: str) -> str:
    # Read after the insert: on PostgreSQL a concurrent insert of the same name waits for the first to commit.
    await db.execute(
        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, new_value
    )
    rows = await db.fetch("SELECT value FROM server_secrets WHERE name = $1", name)
    return str(rows[0][0])


class SecretMethods:
    """The Store's `server_secret`, the same on both backends (see `storage.webhooks.WebhookMethods`)."""

    async def _hook(self, operation: Callable[[Sql], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    async def server_secret(self, name: str, *, new_value: str) -> str:
        return await self._hook(lambda db: stored_secret(db, name, new_value))
