"""Budgets: the period a job counts in, its reservation at create, its settlement when it ends, and the
budget.threshold events the totals announce. Pure functions on exact decimals; storage/writes.py runs them in the
job write's transaction, on the key's period row it holds locked."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from storage.errors import OverBudget
from storage.records import BUDGET_UNITS, BudgetTotals, JobRecord

THRESHOLDS = (80, 100)  # percent of a limit that spent + reserved reaching announces once per period
_ZERO = Decimal(0)

Limits = Mapping[str, Decimal | None]


def period_key(period: str, now: float) -> str:
    """The running-totals key of a budget period at `now` (UTC): "total", "day:2026-12-06" or "month:2026-12"."""
    if period == "total":
        return "total"
    at = datetime.fromtimestamp(now, UTC)
    return f"day:{at:%Y-%m-%d}" if period == "day" else f"month:{at:%Y-%m}"


def resets_at(key: str) -> str | None:
    """When the period a key names ends (ISO 8601 UTC); None for "total", which never resets."""
    kind, _, start = key.partition(":")
    if kind == "day":
        day = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
        return _iso(datetime.fromordinal(day.toordinal() + 1).replace(tzinfo=UTC))
    if kind == "month":
        year, month = map(int, start.split("-"))
        return _iso(datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC))
    return None


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def reserve(totals: BudgetTotals, limits: Limits, reservation: Mapping[str, Any]) -> BudgetTotals:
    """The totals holding a new job's reservation; raises OverBudget when a limited unit cannot take it.

    A job reserves per unit its estimate (0 for an unpriced job the operator allows): refused when it would take
    spent + reserved past the limit, or, reserving nothing, when the budget is used up already.
    """
    changes: dict[str, Decimal] = {}
    for unit in BUDGET_UNITS:
        text = reservation.get(unit)
        if text is None:
            continue
        estimate, limit = Decimal(text), limits.get(unit)
        spent, reserved = totals.spent(unit), totals.reserved(unit)
        used = spent + reserved
        if limit is not None and (used + estimate > limit or (estimate == 0 and used >= limit)):
            raise OverBudget(
                unit=unit, limit=limit, spent=spent, reserved=reserved, estimate=estimate, period=totals.period
            )
        changes[f"reserved_{unit}"] = reserved + estimate
    return msgspec.structs.replace(totals, **changes)


def settle(totals: BudgetTotals, job: JobRecord) -> BudgetTotals:
    """The totals once a job that reserved in them ended: its reservation leaves `reserved`, its charge joins
    `spent`."""
    reservation = job.reservation or {}
    changes: dict[str, Decimal] = {}
    for unit in BUDGET_UNITS:
        text = reservation.get(unit)
        if text is None:
            continue
        estimate = Decimal(text)
        changes[f"reserved_{unit}"] = max(totals.reserved(unit) - estimate, _ZERO)
        changes[f"spent_{unit}"] = totals.spent(unit) + charge(job, unit, estimate)
    return msgspec.structs.replace(totals, **changes)


def charge(job: JobRecord, unit: str, estimate: Decimal) -> Decimal:
    """What a finished job cost in `unit`: what its providers reported charging (net of refunds), else nothing if
    no provider ever accepted it, else its reserved estimate (an accepted job is never free)."""
    # Candidates a route left after they accepted (retry_failed) keep their own cost on the attempt.
    left = [_net(a.get("cost"), unit) for a in job.attempts if a.get("left")]
    reported = [figure for figure in left if figure is not None]
    current = _net(job.cost, unit)
    if current is not None:
        reported.append(current)
    elif job.provider_task_id is not None and reported:
        reported.append(estimate)  # the task the job ended on was accepted, and reported nothing: never free
    if reported:
        return sum(reported, _ZERO)
    if job.provider_task_id is None and not any(a.get("provider_task_id") for a in job.attempts):
        return _ZERO
    return estimate


def _net(cost: Any, unit: str) -> Decimal | None:
    """What a cost says the provider charged in `unit`, net of a reported refund; None if it reports no charge."""
    charged = _figure(cost, f"{unit}_charged")
    if charged is None:
        return None
    return max(charged - (_figure(cost, f"{unit}_refunded") or _ZERO), _ZERO)


def _figure(cost: Any, field: str) -> Decimal | None:
    value = cost.get(field) if isinstance(cost, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Decimal(str(value))  # the number's own text, never the float's binary expansion


def announce(totals: BudgetTotals, limits: Limits) -> tuple[BudgetTotals, list[bytes]]:
    """The totals with `alerted_*` brought up to date, and the detail of each budget.threshold event to log: one
    per threshold that spent + reserved reached since it was last announced (it falls back below: announced again
    when reached again)."""
    changes: dict[str, int] = {}
    details: list[bytes] = []
    for unit in BUDGET_UNITS:
        limit = limits.get(unit)
        if limit is None:
            continue
        spent, reserved = totals.spent(unit), totals.reserved(unit)
        used = spent + reserved
        level = max((t for t in THRESHOLDS if used * 100 >= limit * t), default=0)
        alerted = totals.alerted(unit)
        for threshold in THRESHOLDS:
            if alerted < threshold <= level:
                details.append(
                    _encode(
                        {
                            "threshold": threshold,
                            "unit": unit,
                            "limit": limit,
                            "spent": spent,
                            "reserved": reserved,
                            "remaining": max(limit - used, _ZERO),
                            "period": totals.period,
                            "resets_at": resets_at(totals.period),
                        }
                    )
                )
        if level != alerted:
            changes[f"alerted_{unit}"] = level
    return msgspec.structs.replace(totals, **changes), details


# Money leaves as JSON numbers written with the decimal's exact digits, as GET /v1/usage sends its sums.
_encode = msgspec.json.Encoder(decimal_format="number").encode
