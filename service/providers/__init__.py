"""The provider registry: adding a provider means one module and one line here."""

from __future__ import annotations

from service.providers.base import ModelSpec, ProviderAdapter
from service.providers.imini import Imini
from service.providers.magnific import Magnific
from service.providers.mindvideo import MindVideo
from service.providers.minuit import Minuit
from service.providers.seedancee2 import Seedancee2

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    Seedancee2.name: Seedancee2,
    Minuit.name: Minuit,
    MindVideo.name: MindVideo,
    Imini.name: Imini,
    Magnific.name: Magnific,
}


def all_models() -> dict[str, ModelSpec]:
    return {spec.id: spec for adapter in ADAPTERS.values() for spec in adapter.models}


__all__ = ["ADAPTERS", "ModelSpec", "ProviderAdapter", "all_models"]
