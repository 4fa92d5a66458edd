"""What an emulator module declares (`SandboxSpec`: the provider it emulates, how to build it, Reelay's credentials
for it) and the registry of them by provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgspec
from litestar import Litestar

from sandbox.knobs import SandboxKnobs


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to build a provider's emulator and the credentials Reelay needs to talk to it."""

    # The provider it emulates: the name of the adapter that talks to it.
    provider: str
    factory: Callable[..., Litestar]
    api_key: str
    webhook_secret: str | None = None
    # Provider settings Reelay needs for this emulator (REELAY_<PROVIDER>_<NAME> in production).
    options: dict[str, str] = msgspec.field(default_factory=dict)

    def build(self, knobs: SandboxKnobs | None = None, **kwargs: Any) -> Litestar:
        extra: dict[str, Any] = {"webhook_secret": self.webhook_secret} if self.webhook_secret else {}
        return self.factory(api_key=self.api_key, knobs=knobs, **extra, **kwargs)


def sandbox_registry(*specs: SandboxSpec) -> Mapping[str, SandboxSpec]:
    """The emulators by the provider each emulates, in the order given (`reelay dev` gives them ports in it)."""
    by_provider: dict[str, SandboxSpec] = {}
    for spec in specs:
        if spec.provider in by_provider:
            raise ValueError(f"two emulators are declared for provider {spec.provider!r}")
        by_provider[spec.provider] = spec
    return MappingProxyType(by_provider)
