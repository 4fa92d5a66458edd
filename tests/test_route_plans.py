"""Routes without a server: their configuration checked at start, the candidate plan (filters and `cheapest`), and
the move from one candidate to the next (`lifecycle.rerouted`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from service import lifecycle
from service.errors import ConfigError
from service.providers import ADAPTERS, all_models, registry
from service.providers.base import ProviderAdapter
from service.providers.seedancee2 import Seedancee2
from service.routes import Route, plan
from service.settings import ProviderSettings, Settings
from storage import DispatchState, JobRecord, Stage
from storage.writes import event_detail

MODELS = all_models()
CLIENT = httpx.AsyncClient()  # never used: planning makes no call
ROUTE = {"sd2": {"strategy": "priority", "candidates": ["seedancee2/fast", "mindvideo/doubao-seedance-2-0-fast"]}}


def _settings(**env: str) -> Settings:
    return Settings.from_env(env, adapters=ADAPTERS)


def _adapters(*names: str) -> dict[str, ProviderAdapter]:
    settings = ProviderSettings(base_url="http://127.0.0.1:9", api_key="k", options={"moderation": "disabled"})
    return {name: ADAPTERS[name](settings, CLIENT) for name in names}


# -- configuration ----------------------------------------------------------------------------------------------


def test_routes_are_read_from_reelay_routes_with_their_ids() -> None:
    settings = _settings(REELAY_ROUTES=msgspec.json.encode(ROUTE).decode(), REELAY_ROUTE_TRANSIENT_ATTEMPTS="5")
    assert settings.routes == {
        "sd2": Route(id="sd2", strategy="priority", candidates=tuple(ROUTE["sd2"]["candidates"]))  # type: ignore[arg-type]
    }
    assert settings.route_transient_attempts == 5
    assert _settings().routes == {}
    assert _settings().route_transient_attempts == 3


def test_routes_are_read_from_the_file_reelay_routes_file_names(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(msgspec.json.encode({"sd2": {**ROUTE["sd2"], "strategy": "cheapest", "retry_failed": True}}))
    route = _settings(REELAY_ROUTES_FILE=str(path)).routes["sd2"]
    assert (route.strategy, route.retry_failed) == ("cheapest", True)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            {"sd2": {"strategy": "priority", "candidates": ["nope/x"]}},
            "route 'sd2': unknown candidate model id 'nope/x'",
        ),
        ({"sd/2": {"strategy": "priority", "candidates": ["seedancee2/fast"]}}, "route 'sd/2': a route id is not"),
        ({"": {"strategy": "priority", "candidates": ["seedancee2/fast"]}}, "route '': a route id is not empty"),
        ({"sd2": {"strategy": "priority", "candidates": []}}, "route 'sd2': candidates is empty"),
        (
            {"sd2": {"strategy": "priority", "candidates": ["seedancee2/fast", "seedancee2/fast"]}},
            "route 'sd2': candidate 'seedancee2/fast' is listed twice",
        ),
        ({"sd2": {"strategy": "fastest", "candidates": ["seedancee2/fast"]}}, "route 'sd2': Invalid enum value"),
        ({"sd2": {"strategy": "priority", "candidates": ["seedancee2/fast"], "x": 1}}, "unknown field `x`"),
        ({"sd2": {"candidates": ["seedancee2/fast"]}}, "route 'sd2': Object missing required field `strategy`"),
        (["sd2"], "not a JSON object of routes"),
    ],
)
def test_a_bad_route_is_a_config_error_naming_the_variable_and_the_route(routes: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _settings(REELAY_ROUTES=msgspec.json.encode(routes).decode())
    assert str(raised.value).startswith("REELAY_ROUTES: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_route_id_may_be_neither_a_model_id_nor_an_alias() -> None:

    class Flat(Seedancee2):  # a provider whose model id has no "/"
        name = "flat"
        models = (msgspec.structs.replace(MODELS["seedancee2/fast"], id="flat", provider="flat"),)

    with pytest.raises(ConfigError, match="route 'flat': the route id is a model id"):
        Settings.from_env(
            {"REELAY_ROUTES": '{"flat": {"strategy": "priority", "candidates": ["flat"]}}'}, adapters=registry(Flat)
        )
    with pytest.raises(ConfigError, match="route 'sd2': the route id is also an alias"):
        _settings(REELAY_ROUTES=msgspec.json.encode(ROUTE).decode(), REELAY_MODEL_ALIASES="sd2=seedancee2/pro")


def test_routes_and_a_routes_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REELAY_ROUTES and REELAY_ROUTES_FILE are both set"):
        _settings(REELAY_ROUTES=msgspec.json.encode(ROUTE).decode(), REELAY_ROUTES_FILE=str(tmp_path / "r.json"))
    with pytest.raises(ConfigError, match="REELAY_ROUTES_FILE: cannot read"):
        _settings(REELAY_ROUTES_FILE=str(tmp_path / "missing.json"))


# -- the plan ---------------------------------------------------------------------------------------------------


def _plan(strategy: str, *candidates: str, adapters: dict[str, ProviderAdapter], **given: Any) -> list[str]:
    route = Route(id="r", strategy=strategy, candidates=candidates)  # type: ignore[arg-type]
    kept, _ = plan(route, MODELS, adapters, {"prompt": "p", **given})
    return [spec.id for spec, _ in kept]


def test_cheapest_orders_by_the_estimate_with_unpriced_candidates_last_in_listed_order() -> None:
    adapters = _adapters("seedancee2", "mindvideo", "imini")
    order = _plan(
        "cheapest",
        "mindvideo/doubao-seedance-2-0-fast",  # no estimate
        "seedancee2/pro",  # 20 credits/s at 720p
        "imini/doubao/seedance-2.0",  # no estimate
        "seedancee2/mini",  # 10
        "seedancee2/fast",  # 16
        adapters=adapters,
        resolution="720p",
    )
    assert order == [
        "seedancee2/mini",
        "seedancee2/fast",
        "seedancee2/pro",
        "mindvideo/doubao-seedance-2-0-fast",
        "imini/doubao/seedance-2.0",
    ]


def test_cheapest_compares_credits_with_credits_when_one_candidate_has_no_usd_figure() -> None:
    # Minuit high_quality: 34 credits/s at 720p (and USD); Seedancee2 pro: 20 credits/s, credits only.
    adapters = _adapters("seedancee2", "minuit")
    assert _plan("cheapest", "minuit/high_quality", "seedancee2/pro", adapters=adapters) == [
        "seedancee2/pro",
        "minuit/high_quality",
    ]


def test_priority_keeps_the_listed_order_and_leaves_out_who_cannot_serve_or_is_not_configured() -> None:
    adapters = _adapters("seedancee2", "magnific")
    candidates = ("magnific/seedance-2-mini", "mindvideo/doubao-seedance-2-0-fast", "seedancee2/mini")
    assert _plan("priority", *candidates, adapters=adapters, duration=5) == [candidates[0], candidates[2]]
    route = Route(id="r", strategy="priority", candidates=candidates)
    kept, refused = plan(route, MODELS, adapters, {"prompt": "p", "duration": 7})
    assert [spec.id for spec, _ in kept] == ["seedancee2/mini"]
    assert set(refused) == {"magnific/seedance-2-mini", "mindvideo/doubao-seedance-2-0-fast"}


def test_the_plan_skips_candidates_tried_and_under_a_budget_keeps_those_priced_in_its_units() -> None:
    adapters = _adapters("seedancee2", "mindvideo", "minuit")
    route = Route(
        id="r",
        strategy="priority",
        candidates=("seedancee2/fast", "mindvideo/doubao-seedance-2-0-fast", "minuit/high_quality"),
    )
    given = {"prompt": "p"}
    kept, _ = plan(route, MODELS, adapters, given, skip=frozenset({"seedancee2/fast"}))
    assert [spec.id for spec, _ in kept] == ["mindvideo/doubao-seedance-2-0-fast", "minuit/high_quality"]
    kept, refused = plan(route, MODELS, adapters, given, priced_in=("usd",))
    assert [spec.id for spec, _ in kept] == ["minuit/high_quality"]
    assert refused == {"seedancee2/fast": "no usd estimate", "mindvideo/doubao-seedance-2-0-fast": "no usd estimate"}


# -- the move ---------------------------------------------------------------------------------------------------


def _queued(**changes: Any) -> JobRecord:
    job = lifecycle.new_job(
        job_id="job_01JZ0000000000000000000000",
        api_key_id="k",
        model="sd2",
        routed_model="seedancee2/fast",
        provider="seedancee2",
        input={"prompt": "p"},
        metadata={},
        cost={"credits_estimate": 80},
        callback_token="t",
        now=1_000.0,
        timeout=60,
        reservation={"period": "total", "credits": "80"},
    )
    return msgspec.structs.replace(job, **changes)


def test_rerouted_leaves_the_candidate_and_starts_the_next_one_unsent() -> None:
    job = _queued(dispatch_state=DispatchState.SENDING, dispatch_attempts=3, lease_until=1_100.0, next_attempt_at=None)
    error = {"code": "provider_rejected", "message": "no"}
    spec = MODELS["mindvideo/doubao-seedance-2-0-fast"]
    change = lifecycle.rerouted(job, to_spec=spec, reason="rejected", error=error, cost={}, now=1_002.0)
    assert change is not None
    moved, event = change
    assert event == "job.rerouted"
    left, arrived = moved.attempts
    assert (left["model"], left["left"], left["error"]) == ("seedancee2/fast", "rejected", error)
    assert left["left_at"] == arrived["started_at"]
    assert (arrived["model"], arrived["provider"]) == (spec.id, "mindvideo")
    assert "left" not in arrived
    assert (moved.routed_model, moved.provider, moved.provider_task_id) == (spec.id, "mindvideo", None)
    assert (moved.dispatch_state, moved.dispatch_attempts) == (DispatchState.PENDING, 0)
    assert (moved.next_attempt_at, moved.lease_until) == (1_002.0, None)
    assert moved.cost == {}
    assert moved.reservation == job.reservation  # the budget's hold is the plan's, not one candidate's
    assert (moved.status, moved.stage) == ("queued", Stage.QUEUED)
    assert msgspec.json.decode(event_detail(moved, "job.rerouted") or b"") == {
        "from": "seedancee2/fast",
        "to": spec.id,
        "reason": "rejected",
    }


@pytest.mark.parametrize("stage", [Stage.SUBMITTED, Stage.TERMINAL])
def test_rerouted_leaves_a_job_that_was_accepted_or_ended_meanwhile(stage: Stage) -> None:
    job = _queued(stage=stage)
    spec = MODELS["mindvideo/doubao-seedance-2-0-fast"]
    assert lifecycle.rerouted(job, to_spec=spec, reason="rejected", error=None, cost={}, now=1_002.0) is None


def test_answer_lost_marks_the_current_attempt_once() -> None:
    job = _queued()
    marked = lifecycle.answer_lost(job.attempts)
    assert marked[-1]["answer_lost"] is True
    assert lifecycle.answer_lost(marked) is marked
    assert "answer_lost" not in job.attempts[-1]
