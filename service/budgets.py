"""Per-key budgets on the service side: which candidates a budget lets a job use and what the job reserves, the
402 a refused reservation answers, and the budget GET /v1/usage shows. The running totals are kept by the store
(storage/budgets.py), in the transactions of the job writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from service.errors import InvalidRequest, PaymentRequired
from storage import ApiKeyRecord, BudgetTotals, OverBudget
from storage.budgets import period_key, resets_at
from storage.records import BUDGET_PERIODS, BUDGET_UNITS, Reservation

C = TypeVar("C")  # a candidate: (ModelSpec, ProviderAdapter) in the gateway

ALLOW_UNPRICED = "REELAY_BUDGET_ALLOW_UNPRICED"


def estimate_in(cost: Mapping[str, Any], unit: str) -> Decimal | None:
    """A cost estimate's figure in `unit` as an exact decimal (from the number's own text), None if it has none."""
    value = cost.get(f"{unit}_estimate")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Decimal(str(value))


def plan_under_budget(
    key: ApiKeyRecord,
    plan: Sequence[tuple[C, Mapping[str, Any], str]],
    *,
    allow_unpriced: bool,
    now: float,
) -> tuple[list[C], dict[str, Any] | None]:
    """The candidates a key's budget lets a job use, in plan order, and the job's reservation (None: no budget).

    `plan` holds (candidate, its cost estimate for this input, its model id). Per limited unit, a candidate without
    an estimate in it is dropped unless the operator allows unpriced models (it then reserves 0); none left is a
    400. The reservation holds, per limited unit, the largest estimate of the candidates left: the job may end on
    any of them.
    """
    if not key.has_budget:
        return [candidate for candidate, _, _ in plan], None
    limited = [unit for unit in BUDGET_UNITS if key.limits()[unit] is not None]
    kept = list(plan)
    for unit in limited:
        if allow_unpriced:
            continue
        priced = [entry for entry in kept if estimate_in(entry[1], unit) is not None]
        if not priced:
            models = ", ".join(model for _, _, model in kept)
            raise InvalidRequest(
                f"model: {models} has no {unit} price, and this API key has a {unit} budget; an operator may allow "
                f"unpriced models under a budget with {ALLOW_UNPRICED}=true (they are counted at what the provider "
                "reports charging)",
                details={"field": "model", "unit": unit, "unpriced": [model for _, _, model in kept]},
            )
        kept = priced
    figures: dict[str, str] = {}
    for unit in limited:
        estimates = [e for _, cost, _ in kept if (e := estimate_in(cost, unit)) is not None]
        figures[unit] = str(max(estimates, default=Decimal(0)))
    period = period_key(key.budget_period or "total", now)
    reservation = msgspec.to_builtins(Reservation(period=period, **figures))
    return [candidate for candidate, _, _ in kept], reservation


def refused(exc: OverBudget) -> PaymentRequired:
    """The 402 a reservation the budget cannot take answers, with the numbers."""
    return PaymentRequired(
        f"the API key's {exc.unit} budget cannot take this job: {exc.spent} spent and {exc.reserved} reserved of "
        f"{exc.limit} in period {exc.period}, and the job's estimate is {exc.estimate}",
        details={
            "unit": exc.unit,
            "limit": _number(exc.limit),
            "spent": _number(exc.spent),
            "reserved": _number(exc.reserved),
            "estimate": _number(exc.estimate),
            "period": exc.period,
            "resets_at": resets_at(exc.period),
        },
    )


def _number(value: Decimal) -> msgspec.Raw:
    """A JSON number written with the decimal's exact digits (the error shape's encoder would write a string)."""
    return msgspec.Raw(str(value).encode())


class UnitFigures(msgspec.Struct):
    usd: Decimal | None = None
    credits: Decimal | None = None


class BudgetStatus(msgspec.Struct):
    """The key's budget in its current period, as GET /v1/usage shows it; a unit without a limit is null."""

    limit_usd: Decimal | None
    limit_credits: Decimal | None
    period: str
    period_key: str
    spent: UnitFigures
    reserved: UnitFigures
    remaining: UnitFigures
    resets_at: str | None


def status(key: ApiKeyRecord, totals: BudgetTotals) -> BudgetStatus:
    """The budget of `key` from its current period's totals."""
    spent, reserved, remaining = UnitFigures(), UnitFigures(), UnitFigures()
    for unit, limit in key.limits().items():
        if limit is None:
            continue
        setattr(spent, unit, totals.spent(unit))
        setattr(reserved, unit, totals.reserved(unit))
        setattr(remaining, unit, max(limit - totals.spent(unit) - totals.reserved(unit), Decimal(0)))
    return BudgetStatus(
        limit_usd=key.budget_usd,
        limit_credits=key.budget_credits,
        period=key.budget_period or "total",
        period_key=totals.period,
        spent=spent,
        reserved=reserved,
        remaining=remaining,
        resets_at=resets_at(totals.period),
    )


def parse_amount(text: str, what: str) -> Decimal | None:
    """A budget limit as given on the command line: a decimal of zero or more, or "none" for no limit."""
    if text.strip().lower() == "none":
        return None
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        raise ValueError(f"{what} takes a number such as 25 or 12.50 (or none), got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite number of zero or more, got {text!r}")
    # Bounded so that every backend holds it exactly, and sums of it stay exact.
    if value >= _MOST or value != value.quantize(_FINEST):
        raise ValueError(f"{what} takes at most 15 digits before the point and 12 after, got {text!r}")
    return Decimal(format(value, "f"))  # plain digits: 1e3 is kept and shown as 1000


_MOST = Decimal(10) ** 15
_FINEST = Decimal(10) ** -12


def budget_fields(
    usd: Decimal | None, credits: Decimal | None, period: str | None
) -> tuple[Decimal | None, Decimal | None, str | None]:
    """A key's budget columns: the period defaults to "total" when a limit is set, and is None without one."""
    if period is not None and period not in BUDGET_PERIODS:
        raise ValueError(f"budget period must be one of {', '.join(BUDGET_PERIODS)}, got {period!r}")
    if usd is None and credits is None:
        if period is not None:
            raise ValueError("a budget period needs a limit: give --budget-usd or --budget-credits")
        return None, None, None
    return usd, credits, period or "total"


def describe(key: ApiKeyRecord) -> str:
    """A key's budget in one phrase, for `reelay keys list`."""
    if not key.has_budget:
        return "no budget"
    limits = " + ".join(f"{limit} {unit}" for unit, limit in key.limits().items() if limit is not None)
    return f"budget {limits} per {key.budget_period}" if key.budget_period != "total" else f"budget {limits} in total"
