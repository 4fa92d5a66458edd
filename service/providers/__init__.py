"""The provider registry: a provider is one adapter module and one line in ADAPTERS. Settings, the app and
`reelay dev` all read the registry they are given, so a registry built with `registry()` adds a provider without
touching any of them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from service.providers.base import ModelSpec, ProviderAdapter
from service.providers.imini import Imini
from service.providers.magnific import Magnific
from service.providers.mindvideo import MindVideo
from service.providers.minuit import Minuit
from service.providers.seedancee2 import Seedancee2

ProviderRegistry = Mapping[str, type[ProviderAdapter]]


def registry(*adapters: type[ProviderAdapter]) -> ProviderRegistry:
    """A read-only registry of `adapters` by name; a name given twice, or a model its adapter does not own, is
    refused (jobs are routed to the adapter their model names)."""
    by_name: dict[str, type[ProviderAdapter]] = {}
    for adapter in adapters:
        if adapter.name in by_name:
            raise ValueError(f"two provider adapters are named {adapter.name!r}")
        strays = [spec.id for spec in adapter.models if spec.provider != adapter.name]
        if strays:
            raise ValueError(f"models {strays} of adapter {adapter.name!r} name another provider")
        by_name[adapter.name] = adapter
    return MappingProxyType(by_name)


ADAPTERS = registry(Seedancee2, Minuit, MindVideo, Imini, Magnific)


def all_models(adapters: ProviderRegistry = ADAPTERS) -> dict[str, ModelSpec]:
    return {spec.id: spec for adapter in adapters.values() for spec in adapter.models}


__all__ = ["ADAPTERS", "ModelSpec", "ProviderAdapter", "ProviderRegistry", "all_models", "registry"]
