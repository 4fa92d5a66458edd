"""API-key administration used by `reelay keys` (and by `reelay dev` for its ready-made key)."""

from __future__ import annotations

from decimal import Decimal
from types import EllipsisType

import msgspec

from service.budgets import budget_fields
from service.ids import new_api_key
from service.timestamps import to_iso
from storage import ApiKeyRecord, Store


async def create_key(
    store: Store,
    name: str,
    *,
    now: float,
    budget_usd: Decimal | None = None,
    budget_credits: Decimal | None = None,
    period: str | None = None,
) -> tuple[ApiKeyRecord, str]:
    """Store a new key's hash (and budget); returns the record and the full key, which is never stored."""
    key_id, full_key, secret_hash = new_api_key()
    usd, credits, period = budget_fields(budget_usd, budget_credits, period)
    record = ApiKeyRecord(
        id=key_id,
        name=name,
        secret_hash=secret_hash,
        created_at=to_iso(now, "seconds"),
        budget_usd=usd,
        budget_credits=credits,
        budget_period=period,
    )
    await store.create_api_key(record)
    return record, full_key


async def revoke_key(store: Store, key_id: str, *, now: float) -> bool:
    return await store.revoke_api_key(key_id, to_iso(now, "seconds"))


async def update_budget(
    store: Store,
    key_id: str,
    *,
    usd: Decimal | EllipsisType | None = ...,
    credits: Decimal | EllipsisType | None = ...,
    period: str | None = None,
) -> ApiKeyRecord | None:
    """Change a key's budget (`...` leaves a limit as it is; None removes it; `period` None keeps the key's);
    None if there is no such key. Raises ValueError for a budget that cannot be (a period without a limit)."""
    key = await store.get_api_key(key_id)
    if key is None:
        return None
    new_usd = key.budget_usd if isinstance(usd, EllipsisType) else usd
    new_credits = key.budget_credits if isinstance(credits, EllipsisType) else credits
    if new_usd is None and new_credits is None and period is None:
        fields: tuple[Decimal | None, Decimal | None, str | None] = (None, None, None)  # every limit removed
    else:
        fields = budget_fields(new_usd, new_credits, period or key.budget_period)
    if not await store.set_api_key_budget(key_id, usd=fields[0], credits=fields[1], period=fields[2]):
        return None
    return msgspec.structs.replace(key, budget_usd=fields[0], budget_credits=fields[1], budget_period=fields[2])
