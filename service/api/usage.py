"""`/v1/usage`: the caller's jobs and their exact cost sums, by status, by model and by day."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from service.api.context import authenticate, context
from service.api.errors import ApiOperation, error_responses
from service.api.openapi import SECURITY, text_param
from service.api.query import refuse_unknown_query
from service.errors import InvalidRequest
from service.timestamps import from_iso, to_iso
from service.wire import schema_doc
from storage import ApiKeyRecord, UsageRow
from storage.records import COST_FIELDS

# Litestar documents Decimal as a string; these are sent as numbers (see _encode_money).
Money = Annotated[
    Decimal | None,
    schema_doc(
        "an exact decimal sum; null when no job of the group has this figure", one_of=None, type=["number", "null"]
    ),
]


class UsageTotals(msgspec.Struct):
    jobs: int = 0
    credits_estimate: Money = None
    credits_charged: Money = None
    usd_estimate: Money = None
    usd_charged: Money = None
    jobs_without: Annotated[
        dict[str, int],
        msgspec.Meta(
            description="per figure: the jobs that lack it (no published price, or not charged yet), left out of "
            "its sum"
        ),
    ] = msgspec.field(default_factory=lambda: dict.fromkeys(COST_FIELDS, 0))
    by_status: dict[str, int] = msgspec.field(default_factory=dict)

    def add(self, row: UsageRow) -> None:
        self.jobs += row.jobs
        for field in COST_FIELDS:
            value: Decimal | None = getattr(row, field)
            if value is not None:
                total: Decimal | None = getattr(self, field)
                setattr(self, field, value if total is None else total + value)
            self.jobs_without[field] += row.without[field]
        self.by_status[row.status] = self.by_status.get(row.status, 0) + row.jobs


class UsageRange(msgspec.Struct):
    start: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"format": "date-time"}})] | None
    end: Annotated[str, msgspec.Meta(extra_json_schema={"extra": {"format": "date-time"}})] | None


# An amount of the key's budget; null in a unit the budget does not limit.
Amount = Annotated[
    Decimal | None,
    schema_doc("an exact decimal; null in a unit the budget does not limit", one_of=None, type=["number", "null"]),
]


class BudgetUnits(msgspec.Struct):
    usd: Amount = None
    credits: Amount = None


class Budget(msgspec.Struct):
    """The key's budget in its current period (`reelay keys create|update --budget-*`)."""

    limit_usd: Amount
    limit_credits: Amount
    period: Annotated[str, msgspec.Meta(description="day, month or total (UTC periods)")]
    period_key: Annotated[
        str, msgspec.Meta(description='the current period: "total", "day:2026-12-06", "month:2026-12"')
    ]
    spent: Annotated[BudgetUnits, msgspec.Meta(description="what finished jobs of the period cost, per unit")]
    reserved: Annotated[BudgetUnits, msgspec.Meta(description="what unfinished jobs of the period hold, per unit")]
    remaining: Annotated[BudgetUnits, msgspec.Meta(description="limit - spent - reserved (never below 0), per unit")]
    resets_at: Annotated[str | None, msgspec.Meta(description="when the period ends; null for total")]


class Usage(msgspec.Struct):
    range: UsageRange
    total: UsageTotals
    by_status: dict[str, int]
    by_model: dict[str, UsageTotals]
    by_day: dict[str, UsageTotals]
    budget: Annotated[
        Budget | None, msgspec.Meta(description="the key's budget now (whatever the range); null without one")
    ] = None


# Money leaves as JSON numbers with the exact decimal digits (Litestar's encoder would write strings).
_encode_money = msgspec.json.Encoder(decimal_format="number").encode


@get(
    "/v1/usage",
    dependencies={"caller": Provide(authenticate)},
    guards=[refuse_unknown_query],
    tags=["usage"],
    summary="Jobs and costs by status, by model and by day",
    security=SECURITY,
    responses=error_responses(400, 401, 429, 503),
    operation_class=ApiOperation,
)
async def usage(
    request: Request[Any, Any, Any],
    caller: NamedDependency[ApiKeyRecord],
    start: Annotated[
        str | None,
        QueryParameter(
            **text_param("ISO 8601 date or datetime (UTC if no offset), inclusive: jobs created at or after it")
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            **text_param(
                "ISO 8601 date or datetime (UTC if no offset), exclusive: jobs created before it. A date is its "
                "midnight UTC, so `end=2025-07-01` ends with June 30; must be after `start`"
            )
        ),
    ] = None,
) -> Response[Usage]:
    """Jobs created in [`start`, `end`): `start` inclusive, `end` exclusive (ISO 8601 dates or datetimes, UTC).
    Credits and USD are summed separately and exactly: estimates when the job was accepted, charges as the
    provider reported them. A sum is null when no job of the group has that figure, and `jobs_without` counts the
    jobs each sum leaves out. `budget` is the key's budget in its current period, or null."""
    start_iso, end_iso = _iso_param("start", start), _iso_param("end", end)
    if start_iso is not None and end_iso is not None and end_iso <= start_iso:
        raise InvalidRequest(
            f"start ({start_iso}) must be before end ({end_iso}); end is exclusive",
            details={"fields": ["start", "end"], "start": start_iso, "end": end_iso},
        )
    total = UsageTotals()
    by_model: dict[str, UsageTotals] = {}
    by_day: dict[str, UsageTotals] = {}
    for row in await context(request).gateway.usage(caller.id, start_iso, end_iso):
        total.add(row)
        by_model.setdefault(row.model, UsageTotals()).add(row)
        by_day.setdefault(row.day, UsageTotals()).add(row)
    gateway = context(request).gateway
    budget = await gateway.budget(caller.id)
    report = Usage(
        range=UsageRange(start=start_iso, end=end_iso),
        total=total,
        by_status=dict(total.by_status),
        by_model=by_model,
        by_day=by_day,
        budget=None if budget is None else msgspec.convert(msgspec.to_builtins(budget), Budget),
    )
    return Response[Any](_encode_money(report), media_type=MediaType.JSON)  # documented as Usage


def _iso_param(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    try:
        return to_iso(from_iso(value))
    except ValueError:
        raise InvalidRequest(f"{name}: not an ISO 8601 date or datetime", details={"field": name}) from None
