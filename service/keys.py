"""API-key administration used by `reelay keys` (and by `reelay dev` for its ready-made key)."""

from __future__ import annotations

from datetime import UTC, datetime

from service.ids import new_api_key
from storage import ApiKeyRecord, Store


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def create_key(store: Store, name: str) -> tuple[ApiKeyRecord, str]:
    """Store a new key's hash; returns the record and the full key, which is never stored."""
    key_id, full_key, secret_hash = new_api_key()
    record = ApiKeyRecord(id=key_id, name=name, secret_hash=secret_hash, created_at=_now())
    await store.create_api_key(record)
    return record, full_key


async def revoke_key(store: Store, key_id: str) -> bool:
    return await store.revoke_api_key(key_id, _now())
