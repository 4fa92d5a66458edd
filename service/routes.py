"""Routes: one operator-configured model id that names an ordered list of candidate model ids, and the plan of
candidates a job on a route goes through (at create, and again at each failover)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from service.errors import ConfigError, InvalidRequest

if TYPE_CHECKING:
    from service.providers.base import ModelSpec, ProviderAdapter

Strategy = Literal["priority", "cheapest"]
Candidate = tuple["ModelSpec", "ProviderAdapter"]


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One route as written in REELAY_ROUTES: `priority` tries the candidates in the listed order, `cheapest` by
    this job's estimate. `retry_failed`: a job the provider failed after accepting it moves on too."""

    strategy: Strategy
    candidates: tuple[str, ...]
    retry_failed: bool = False


class Route(RouteConfig, frozen=True, kw_only=True):
    """A configured route, with the id it is configured under."""

    id: str


def parse_routes(
    raw: str, source: str, models: Mapping[str, Any], aliases: Mapping[str, str] | None = None
) -> dict[str, Route]:
    """The routes of a JSON object `{"<route id>": {"strategy", "candidates", "retry_failed"?}}`, checked against
    the model ids in `models`; a ConfigError names `source` (the variable or file) and the first problem."""
    try:
        given = msgspec.json.decode(raw, type=dict[str, dict[str, Any]])
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not a JSON object of routes ({exc})") from None
    routes: dict[str, Route] = {}
    for route_id, fields in given.items():
        try:
            route = msgspec.convert(fields, RouteConfig)
        except msgspec.ValidationError as exc:  # e.g. "Invalid enum value 'x' - at `$.strategy`"
            raise ConfigError(f"{source}: route {route_id!r}: {exc}") from None
        problem = _problem(route_id, route, models, aliases or {})
        if problem is not None:
            raise ConfigError(f"{source}: route {route_id!r}: {problem}")
        routes[route_id] = Route(id=route_id, **msgspec.structs.asdict(route))
    return routes


def _problem(route_id: str, route: RouteConfig, models: Mapping[str, Any], aliases: Mapping[str, str]) -> str | None:
    if not route_id or "/" in route_id:
        return "a route id is not empty and has no '/' (model ids have one)"
    if route_id in models:
        return "the route id is a model id"
    if route_id in aliases:
        return "the route id is also an alias in REELAY_MODEL_ALIASES"
    if not route.candidates:
        return "candidates is empty"
    unknown = [c for c in route.candidates if c not in models]
    if unknown:
        return f"unknown candidate model id {unknown[0]!r}; GET /v1/models lists the model ids"
    twice = [c for i, c in enumerate(route.candidates) if c in route.candidates[:i]]
    if twice:
        return f"candidate {twice[0]!r} is listed twice"
    return None


def plan(
    route: Route,
    models: Mapping[str, ModelSpec],
    adapters: Mapping[str, ProviderAdapter],
    given: dict[str, Any],
    *,
    skip: frozenset[str] = frozenset(),
    priced_in: tuple[str, ...] = (),
) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates a job on `route` may go to, in the order it tries them, and why each other one may not.

    A candidate is kept when its provider is configured and it can serve `given`; `skip` leaves out the ones a
    job was already on; `priced_in` ("usd", "credits") keeps only candidates with an estimate in those units."""
    from service.capabilities import check_for  # here: settings imports this module, and the providers settings

    kept: list[Candidate] = []
    refused: dict[str, str] = {}
    for model_id in route.candidates:
        if model_id in skip:
            continue
        spec = models[model_id]
        adapter = adapters.get(spec.provider)
        if adapter is None:
            refused[model_id] = f"provider {spec.provider} is not configured"
            continue
        try:
            check_for(spec, adapter, given)
        except InvalidRequest as exc:
            refused[model_id] = exc.message
            continue
        estimate = adapter.estimate(spec, given)
        missing = [unit for unit in priced_in if _figure(estimate, spec, unit) is None]
        if missing:
            refused[model_id] = f"no {missing[0]} estimate"
            continue
        kept.append((spec, adapter))
    if route.strategy == "cheapest":
        kept = cheapest_first(kept, given)
    return kept, refused


def cheapest_first(candidates: list[Candidate], given: dict[str, Any]) -> list[Candidate]:
    """The candidates by this input's estimate, cheapest first; candidates without one last, in listed order.

    Credits are compared with credits and USD with USD (credits count in USD where the price gives
    `usd_per_credit`): USD when every priced candidate has a USD figure, else credits when every one has
    credits, else those with USD before those with credits only."""
    figures = [
        (_figure(a.estimate(s, given), s, "usd"), _figure(a.estimate(s, given), s, "credits")) for s, a in candidates
    ]
    priced = [f for f in figures if f != (None, None)]
    by_usd = all(usd is not None for usd, _ in priced)
    by_credits = not by_usd and all(credits is not None for _, credits in priced)

    def key(index: int) -> tuple[int, Decimal]:
        usd, credits = figures[index]
        if usd is None and credits is None:
            return (2, Decimal(0))  # unpriced: last; the sort is stable, so in listed order
        if by_credits:
            return (0, credits or Decimal(0))
        return (0, usd) if usd is not None else (1, credits or Decimal(0))

    return [candidates[i] for i in sorted(range(len(candidates)), key=key)]


def _figure(estimate: Mapping[str, Any], spec: ModelSpec, unit: str) -> Decimal | None:
    """The estimate in `unit` as an exact decimal (credits converted to USD where the price says how)."""
    value = estimate.get(f"{unit}_estimate")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    credits = estimate.get("credits_estimate")
    rate = spec.price.usd_per_credit if spec.price is not None else None
    if unit == "usd" and isinstance(credits, int | float) and rate is not None:
        return Decimal(str(credits)) * Decimal(str(rate))
    return None


def no_candidate(route: Route, refused: Mapping[str, str]) -> InvalidRequest:
    """The 400 for a job on `route` that no candidate can take, naming each candidate's refusal."""
    reasons = "; ".join(f"{model_id}: {why}" for model_id, why in refused.items())
    return InvalidRequest(
        f"model: no candidate of route {route.id} can serve this job ({reasons})",
        details={"field": "model", "route": route.id, "candidates": dict(refused)},
    )


def capability_union(specs: list[ModelSpec]) -> dict[str, Any]:
    """What at least one of the candidates offers, as GET /v1/models shows a route."""
    from service.capabilities import accepted_inputs  # see `plan`

    def union(values: list[tuple[Any, ...]]) -> list[Any]:
        return list(dict.fromkeys(v for group in values for v in group))

    return {
        "durations": sorted(union([s.durations for s in specs])),
        "resolutions": union([s.resolutions for s in specs]),
        "aspect_ratios": union([s.aspect_ratios for s in specs]),
        "inputs": union([accepted_inputs(s) for s in specs]),
        "max_reference_images": max(s.max_reference_images for s in specs),
        "max_reference_videos": max(s.max_reference_videos for s in specs),
        "max_reference_audios": max(s.max_reference_audios for s in specs),
        "audio": any(s.audio for s in specs),
    }
