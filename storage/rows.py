"""Job and event rows to records and back, the same for both backends.

Every job query selects `JOB_COLUMNS`, so a row is read by position: `JOB_FIXED_COLUMNS`, then
`JOB_MUTABLE_COLUMNS`. JSON columns travel as text (SQLite 3.45+ would read a BLOB handed to its JSON functions
as binary JSONB; PostgreSQL casts the text to jsonb).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from storage.records import JOB_FIXED_COLUMNS, JOB_MUTABLE_COLUMNS, ApiKeyRecord, BudgetTotals, EventRecord, JobRecord

JOB_COLUMNS = ", ".join(JOB_FIXED_COLUMNS + JOB_MUTABLE_COLUMNS)
EVENT_COLUMNS = "id, job_id, api_key_id, type, created_at, job, detail"

_encoder = msgspec.json.Encoder()
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
_decode_meta = msgspec.json.Decoder(dict[str, str]).decode
_decode_list = msgspec.json.Decoder(list[str]).decode
_decode_attempts = msgspec.json.Decoder(list[dict[str, Any]]).decode


def json_text(value: Any) -> str:
    return _encoder.encode(value).decode()


def iso_timestamp(at: float) -> str:
    """A time the store stamps itself (a receipt, a migration), as stored: ISO 8601 UTC to the microsecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def job_from_row(row: Sequence[Any]) -> JobRecord:
    # By position (JOB_FIXED_COLUMNS, then JOB_MUTABLE_COLUMNS): this runs for every job read.
    return JobRecord(
        id=row[0],
        api_key_id=row[1],
        model=row[2],
        input=_decode_dict(row[3]),
        metadata=_decode_meta(row[4]),
        callback_token=row[5],
        created_at=row[6],
        webhook_url=row[7],
        webhook_events=None if row[8] is None else _decode_list(row[8]),
        reservation=None if row[9] is None else _decode_dict(row[9]),
        provider=row[10],
        routed_model=row[11],
        attempts=[] if row[12] is None else _decode_attempts(row[12]),
        status=row[13],
        stage=row[14],
        provider_task_id=row[15],
        output=None if row[16] is None else _decode_dict(row[16]),
        error=None if row[17] is None else _decode_dict(row[17]),
        cost=_decode_dict(row[18]),
        updated_at=row[19],
        completed_at=row[20],
        deadline_at=row[21],
        dispatch_state=row[22],
        dispatch_attempts=row[23],
        next_attempt_at=row[24],
        next_poll_at=row[25],
        poll_attempts=row[26],
        lease_until=row[27],
    )


def fixed_values(job: JobRecord) -> list[Any]:
    """Values of `JOB_FIXED_COLUMNS`, in order."""
    return [
        job.id,
        job.api_key_id,
        job.model,
        json_text(job.input),
        json_text(job.metadata),
        job.callback_token,
        job.created_at,
        job.webhook_url,
        None if job.webhook_events is None else json_text(job.webhook_events),
        None if job.reservation is None else json_text(job.reservation),
    ]


def mutable_values(job: JobRecord) -> list[Any]:
    """Values of `JOB_MUTABLE_COLUMNS`, in order."""
    return [
        job.provider,
        job.routed_model,
        json_text(job.attempts) if job.attempts else None,
        job.status,
        job.stage,
        job.provider_task_id,
        None if job.output is None else json_text(job.output),
        None if job.error is None else json_text(job.error),
        json_text(job.cost),
        job.updated_at,
        job.completed_at,
        job.deadline_at,
        job.dispatch_state,
        job.dispatch_attempts,
        job.next_attempt_at,
        job.next_poll_at,
        job.poll_attempts,
        job.lease_until,
    ]


def event_from_row(row: Sequence[Any]) -> EventRecord:
    return EventRecord(
        id=row[0], job_id=row[1], api_key_id=row[2], type=row[3], created_at=row[4], job=row[5], detail=row[6]
    )


def inline_from_row(row: Sequence[Any] | None) -> dict[str, str]:
    """A job's inline data from its `job_inline` row (`data_uris`), or none."""
    return {} if row is None else _decode_meta(row[0])


def last_within(sizes: Iterable[Sequence[Any]], max_bytes: int) -> int | None:
    """From (event id, snapshot bytes) in id order, the id of the last event of those that fit in
    `max_bytes` together (the first one always does); None for no events."""
    last, total = None, 0
    for event_id, size in sizes:
        total += size
        if last is not None and total > max_bytes:
            break
        last = event_id
    return last


# -- API keys and budgets ----------------------------------------------------------------------

KEY_COLUMNS = "id, name, secret_hash, created_at, revoked_at, budget_usd, budget_credits, budget_period"
_BUDGET_FIELDS = ("reserved_usd", "spent_usd", "reserved_credits", "spent_credits", "alerted_usd", "alerted_credits")
# A period's totals and the key's limits, by the period's primary key ($1 key id, $2 period).
LOCK_BUDGET = (
    f"SELECT {', '.join('b.' + f for f in _BUDGET_FIELDS)}, k.budget_usd, k.budget_credits "
    "FROM budget_periods b JOIN api_keys k ON k.id = b.api_key_id WHERE b.api_key_id = $1 AND b.period = $2"
)
SAVE_BUDGET = (
    f"UPDATE budget_periods SET {', '.join(f'{f} = ${n}' for n, f in enumerate(_BUDGET_FIELDS, 3))} "
    "WHERE api_key_id = $1 AND period = $2"
)
SELECT_BUDGET = f"SELECT {', '.join(_BUDGET_FIELDS)} FROM budget_periods WHERE api_key_id = $1 AND period = $2"


def _money(value: Any) -> Decimal | None:
    """A stored amount: exact text (SQLite) or numeric (PostgreSQL), never a float."""
    return None if value is None else Decimal(value)


def key_from_row(row: Sequence[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        name=row[1],
        secret_hash=bytes(row[2]),
        created_at=row[3],
        revoked_at=row[4],
        budget_usd=_money(row[5]),
        budget_credits=_money(row[6]),
        budget_period=row[7],
    )


def key_values(key: ApiKeyRecord, money: Any) -> list[Any]:
    """Values of KEY_COLUMNS, each amount passed through `money` (str for SQLite's text)."""
    amounts = [None if v is None else money(v) for v in (key.budget_usd, key.budget_credits)]
    return [key.id, key.name, key.secret_hash, key.created_at, key.revoked_at, *amounts, key.budget_period]


def budget_from_row(row: Sequence[Any] | None, api_key_id: str, period: str) -> BudgetTotals:
    """A period's totals from the first six columns of a LOCK_BUDGET or SELECT_BUDGET row; zeros for no row."""
    if row is None:
        return BudgetTotals(api_key_id=api_key_id, period=period)
    return BudgetTotals(
        api_key_id=api_key_id,
        period=period,
        reserved_usd=Decimal(row[0]),
        spent_usd=Decimal(row[1]),
        reserved_credits=Decimal(row[2]),
        spent_credits=Decimal(row[3]),
        alerted_usd=int(row[4]),
        alerted_credits=int(row[5]),
    )


def budget_limits(usd: Any, credits: Any) -> dict[str, Decimal | None]:
    return {"usd": _money(usd), "credits": _money(credits)}


def budget_values(totals: BudgetTotals, money: Any) -> list[Any]:
    """SAVE_BUDGET's values, each amount passed through `money`."""
    return [
        totals.api_key_id,
        totals.period,
        *(money(getattr(totals, f)) for f in _BUDGET_FIELDS[:4]),
        totals.alerted_usd,
        totals.alerted_credits,
    ]
