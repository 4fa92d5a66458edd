"""`provider_options` over real HTTP against every provider's emulator: a key Reelay validates, prices or sets
itself is refused with 400 before anything goes upstream; a provider-only key the model lists reaches the provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.providers import ADAPTERS
from tests.harness import Stack, stack

IMAGE = "https://example.com/first-frame.jpg"
# The case: estimated at 40 credits (pro, 4 s, 480p), sent as 15 s, 1080p, with audio and a 6,018-character
# prompt, and charged 750.
OVERPRICED = {"duration": 15, "resolution": "1080p", "generate_audio": True, "prompt": "x" * 6018}
# Per provider: a model, the input it needs, and provider_options each with the field Reelay sets it from.
OVERRIDES: dict[str, tuple[str, dict[str, Any], list[tuple[dict[str, Any], list[str]]]]] = {
    "seedancee2": (
        "seedancee2/pro",
        {"duration": 4, "resolution": "480p"},
        [
            (OVERPRICED, ["input.duration"]),
            ({"image_urls": [IMAGE]}, ["input.reference_images"]),
            ({"callback_url": "https://evil.example/hook"}, []),
        ],
    ),
    "minuit": (
        "minuit/high_quality",
        {},
        [
            ({"resolution": "1080p"}, ["input.resolution"]),
            ({"audio": True}, ["input.generate_audio"]),
            ({"moderation": "enabled"}, ["REELAY_MINUIT_MODERATION"]),
        ],
    ),
    "mindvideo": (
        "mindvideo/doubao-seedance-2-0-fast",
        {},
        [
            ({"duration": 15}, ["input.duration"]),
            ({"size": "9:16"}, ["input.aspect_ratio"]),
            ({"image_with_roles": []}, ["input.first_frame", "input.last_frame", "input.reference_images"]),
        ],
    ),
    "imini": (
        "imini/doubao/seedance-2.0",
        {},
        [
            ({"generate_audio": True}, ["input.generate_audio"]),
            ({"extra_params": {"seed": 7}}, ["input.seed", "input.watermark", "input.return_last_frame"]),
            ({"model": "doubao/seedance-2.0-fast"}, ["model"]),
        ],
    ),
    "magnific": (
        "magnific/seedance-2-mini",
        {},
        [
            ({"prompt": "x" * 2001}, ["input.prompt"]),
            ({"image": IMAGE}, ["input.first_frame"]),
            ({"webhook_url": "https://evil.example/hook"}, []),
        ],
    ),
}
# What each model passes through, by name and JSON type; Seedancee2 and imini have no field that Reelay's
# normalized input does not already cover.
PASS_THROUGH = {
    "seedancee2/pro": {},
    "seedancee2/fast": {},
    "seedancee2/mini": {},
    "minuit/high_quality": {},
    "minuit/wan2.7-i2v-spicy": {"prompt_extend": "boolean"},
    "mindvideo/doubao-seedance-2-0-fast": {"tools": "array"},
    "imini/doubao/seedance-2.0": {},
    "magnific/seedance-2-mini": {"enable_safety_checker": "boolean"},
}


async def _create(running: Stack, model: str, given: dict[str, Any]) -> Any:
    body = {"model": model, "input": {"prompt": "waves", **given}}
    return await running.client.post(f"{running.url}/v1/jobs", json=body, headers=running.headers)


@pytest.mark.parametrize("provider", list(OVERRIDES))
async def test_provider_options_overriding_what_reelay_validates_or_prices_get_400_before_anything_goes_upstream(
    tmp_path: Path, provider: str
) -> None:
    model, given, cases = OVERRIDES[provider]
    async with stack(tmp_path, providers=(provider,)) as running:
        for options, use in cases:
            response = await _create(running, model, {**given, "provider_options": options})
            assert response.status_code == 400, response.text[:500]
            error = response.json()["error"]
            field = f"input.provider_options.{next(iter(options))}"
            assert error["details"] == {"field": field, "model": model, "use": use}
            assert field in error["message"]
        creates = await running.sandbox(provider, "GET", "/_sandbox/creates")
        listed = (await running.client.get(f"{running.url}/v1/jobs", headers=running.headers)).json()
    assert creates["attempts"] == 0
    assert listed["data"] == []


async def test_models_list_the_provider_options_that_validation_accepts(tmp_path: Path) -> None:
    async with stack(tmp_path, providers=tuple(ADAPTERS)) as running:
        models = (await running.client.get(f"{running.url}/v1/models", headers=running.headers)).json()["data"]
        listed = {m["id"]: m["capabilities"]["provider_options"] for m in models}
        refused = {}
        for model in listed:
            given = {"first_frame": IMAGE} if model == "minuit/wan2.7-i2v-spicy" else {}
            response = await _create(running, model, {**given, "provider_options": {"motion_blur": True}})
            assert response.status_code == 400, response.text[:500]
            refused[model] = response.json()["error"]["details"]
        creates = [await running.sandbox(name, "GET", "/_sandbox/creates") for name in ADAPTERS]
    assert listed == PASS_THROUGH
    for model, details in refused.items():
        field = "input.provider_options.motion_blur"
        assert details == {"field": field, "model": model, "allowed": sorted(PASS_THROUGH[model])}
    assert [c["attempts"] for c in creates] == [0] * len(ADAPTERS)


@pytest.mark.parametrize(
    ("provider", "model", "given", "option"),
    [
        ("minuit", "minuit/wan2.7-i2v-spicy", {"first_frame": IMAGE}, {"prompt_extend": False}),
        ("mindvideo", "mindvideo/doubao-seedance-2-0-fast", {}, {"tools": [{"type": "web_search"}]}),
        ("magnific", "magnific/seedance-2-mini", {}, {"enable_safety_checker": False}),
    ],
)
async def test_provider_only_option_the_model_lists_reaches_the_provider(
    tmp_path: Path, provider: str, model: str, given: dict[str, Any], option: dict[str, Any]
) -> None:
    async with stack(tmp_path, providers=(provider,)) as running:
        response = await _create(running, model, {**given, "provider_options": option})
        assert response.status_code == 202, response.text[:500]
        await running.accepted(response.json()["id"])
        creates = await running.sandbox(provider, "GET", "/_sandbox/creates")
    body = creates["accepted"][0]["body"]
    sent = body.get("input", body)  # MindVideo's create nests the fields under `input`
    assert sent.items() >= option.items()


async def test_provider_option_of_the_wrong_type_is_refused_naming_the_type(tmp_path: Path) -> None:
    model = "magnific/seedance-2-mini"
    async with stack(tmp_path, providers=("magnific",)) as running:
        response = await _create(running, model, {"provider_options": {"enable_safety_checker": "false"}})
        creates = await running.sandbox("magnific", "GET", "/_sandbox/creates")
    assert response.status_code == 400
    field = "input.provider_options.enable_safety_checker"
    assert response.json()["error"]["details"] == {"field": field, "model": model, "type": "boolean"}
    assert creates["attempts"] == 0
