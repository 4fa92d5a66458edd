"""The provider registry: built from adapter classes, read-only, one adapter per name, each owning its models."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from service.providers import ADAPTERS, all_models, registry
from service.providers.base import ModelSpec
from service.providers.imini import Imini
from service.providers.minuit import Minuit


def test_the_built_in_registry_holds_the_five_providers_and_their_models() -> None:
    assert list(ADAPTERS) == ["seedancee2", "minuit", "mindvideo", "imini", "magnific"]
    assert all(spec.provider in ADAPTERS for spec in all_models().values())


def test_a_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="two provider adapters are named 'imini'"):
        registry(Imini, Minuit, Imini)


def test_an_adapter_whose_model_names_another_provider_is_refused() -> None:
    class Stray(Imini):
        name: ClassVar[str] = "stray"
        models: ClassVar[tuple[ModelSpec, ...]] = (msgspec.structs.replace(Imini.models[0], id="stray/x"),)

    with pytest.raises(ValueError, match="models \\['stray/x'\\] of adapter 'stray' name another provider"):
        registry(Stray)


def test_models_come_from_the_registry_given() -> None:
    assert set(all_models(registry(Minuit))) == {"minuit/high_quality", "minuit/wan2.7-i2v-spicy"}
