"""The per-key limits every replica shares (`storage.base.SharesLimits`): a token bucket row per API key and a
row per open event stream, both on the database's clock so replicas on different hosts agree on the time."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

# Two-key advisory locks (their own key space, apart from the one-key locks the store takes elsewhere): this class
# ("RELY") and a hash of the API key serialise the opening of one key's streams.
_STREAM_LOCK_CLASS = 0x52454C59

_LEVEL = "least($3::float8, b.tokens + greatest(0, extract(epoch FROM excluded.at - b.at))::float8 * $2::float8)"
# One statement per request: refill by the time since the last one, then spend a token if there is a whole one.
_TAKE = (
    "INSERT INTO rate_buckets AS b (api_key_id, tokens, at, allowed) VALUES ($1, $3::float8 - 1, clock_timestamp(), "
    f"true) ON CONFLICT (api_key_id) DO UPDATE SET tokens = CASE WHEN {_LEVEL} >= 1 THEN {_LEVEL} - 1 ELSE {_LEVEL} "
    f"END, at = excluded.at, allowed = {_LEVEL} >= 1 RETURNING allowed, tokens"
)
# A provider's bucket: refill since the last take, then grant up to $4 whole tokens above a reserve of $5 (none while
# a 429's pause lasts; for a status check, none either while a create waits: $6 says it is a create).
_P_LEVEL = "least($3::float8, b.tokens + greatest(0, extract(epoch FROM excluded.at - b.at))::float8 * $2::float8)"
_P_GRANT = (
    "CASE WHEN b.paused_until > excluded.at OR (NOT $6::bool AND b.creates_until > excluded.at) THEN 0 "
    f"ELSE greatest(0, least($4::int, floor({_P_LEVEL} - $5::float8)))::int END"
)
_P_FIRST = "greatest(0, least($4::int, floor($3::float8 - $5::float8)))::int"
_TAKE_PROVIDER = (
    "INSERT INTO provider_rates AS b (provider, tokens, at, granted) "
    f"VALUES ($1, $3::float8 - {_P_FIRST}, clock_timestamp(), {_P_FIRST}) ON CONFLICT (provider) DO UPDATE SET "
    f"tokens = {_P_LEVEL} - {_P_GRANT}, at = excluded.at, granted = {_P_GRANT}, "
    f"creates_until = CASE WHEN $6::bool AND {_P_GRANT} = 0 THEN excluded.at + make_interval(secs => $7::float8) "
    "ELSE b.creates_until END "
    "RETURNING granted, tokens, greatest(0, extract(epoch FROM b.paused_until - b.at))::float8"
)
_REFUND_PROVIDER = "UPDATE provider_rates SET tokens = least($3::float8, tokens + $2::float8) WHERE provider = $1"
_PAUSE_PROVIDER = (
    "INSERT INTO provider_rates AS b (provider, tokens, at, granted, paused_until) VALUES ($1, 0, clock_timestamp(), "
    "0, clock_timestamp() + make_interval(secs => $2::float8)) ON CONFLICT (provider) DO UPDATE SET tokens = 0, "
    "at = excluded.at, paused_until = greatest(b.paused_until, excluded.paused_until)"
)
_LOCK_KEY_STREAMS = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
# Under the key's lock: forget its lapsed slots, then take one if fewer than the cap are live.
_OPEN_SLOT = (
    "WITH lapsed AS (DELETE FROM stream_slots WHERE api_key_id = $1 AND expires_at <= clock_timestamp()) "
    "INSERT INTO stream_slots (api_key_id, id, owner, expires_at) "
    "SELECT $1, $2, $3, clock_timestamp() + make_interval(secs => $5) "
    "WHERE (SELECT count(*) FROM stream_slots WHERE api_key_id = $1 AND expires_at > clock_timestamp()) < $4"
)
_SLOTS = "(api_key_id, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
_RENEW_SLOTS = f"UPDATE stream_slots SET expires_at = clock_timestamp() + make_interval(secs => $3) WHERE {_SLOTS}"
_RELEASE_SLOTS = f"DELETE FROM stream_slots WHERE {_SLOTS}"


class LimitMethods:
    """The PostgresStore's shared-limit methods."""

    lease_owner: str  # names this store instance in the slots it holds

    def _connection(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def take_request(self, api_key_id: str, *, rate: float, burst: int) -> float | None:
        async with self._connection() as conn:
            allowed, tokens = await conn.fetchrow(_TAKE, api_key_id, rate, burst)
        return None if allowed else (1.0 - tokens) / rate

    async def take_provider_tokens(
        self, provider: str, *, want: int, rate: float, burst: float, reserve: float, create: bool, hold: float
    ) -> tuple[int, float, float]:
        async with self._connection() as conn:
            granted, tokens, paused = await conn.fetchrow(
                _TAKE_PROVIDER, provider, rate, burst, want, reserve, create, hold
            )
        return int(granted), float(tokens), float(paused or 0.0)

    async def refund_provider_tokens(self, provider: str, count: int, *, burst: float) -> None:
        async with self._connection() as conn:
            await conn.execute(_REFUND_PROVIDER, provider, count, burst)

    async def pause_provider(self, provider: str, seconds: float) -> None:
        async with self._connection() as conn:
            await conn.execute(_PAUSE_PROVIDER, provider, seconds)

    async def open_stream_slot(self, api_key_id: str, slot_id: str, *, cap: int, ttl: float) -> bool:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_LOCK_KEY_STREAMS, _STREAM_LOCK_CLASS, api_key_id)
            status: str = await conn.execute(_OPEN_SLOT, api_key_id, slot_id, self.lease_owner, cap, ttl)
        return status.endswith(" 1")

    async def renew_stream_slots(self, slots: Sequence[tuple[str, str]], *, ttl: float) -> None:
        if slots:
            async with self._connection() as conn:
                await conn.execute(_RENEW_SLOTS, *_columns(slots), ttl)

    async def release_stream_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        if slots:
            async with self._connection() as conn:
                await conn.execute(_RELEASE_SLOTS, *_columns(slots))


def _columns(slots: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [key for key, _ in slots], [slot for _, slot in slots]
