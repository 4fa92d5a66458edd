"""API-key administration used by `reelay keys` (and by `reelay dev` for its ready-made key)."""

from __future__ import annotations

from service.ids import new_api_key
from service.timestamps import to_iso
from storage import ApiKeyRecord, Store


async def create_key(store: Store, name: str, *, now: float) -> tuple[ApiKeyRecord, str]:
    """Store a new key's hash; returns the record and the full key, which is never stored."""
    key_id, full_key, secret_hash = new_api_key()
    record = ApiKeyRecord(id=key_id, name=name, secret_hash=secret_hash, created_at=to_iso(now, "seconds"))
    await store.create_api_key(record)
    return record, full_key


async def revoke_key(store: Store, key_id: str, *, now: float) -> bool:
    return await store.revoke_api_key(key_id, to_iso(now, "seconds"))
