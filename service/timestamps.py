"""Instants as the API and the database spell them: ISO 8601 in UTC with a `Z`, formatted and parsed here only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def to_iso(instant: float | datetime, precision: Precision = "milliseconds") -> str:
    """`2025-07-01T12:00:00.000Z` for a unix time or an aware datetime (jobs and events keep milliseconds)."""
    when = instant if isinstance(instant, datetime) else datetime.fromtimestamp(instant, UTC)
    return when.astimezone(UTC).isoformat(timespec=precision).replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    """An ISO 8601 date or datetime as an aware UTC datetime; one without an offset is taken as UTC.

    Raises ValueError when `text` is not one (or its UTC time is out of range).
    """
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-23:59 and 0001-01-01T00:00+01:00 have no UTC time
        raise ValueError(f"{text!r} has no UTC time in range") from None
