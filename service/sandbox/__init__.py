"""Sandbox emulators of the providers, for tests and `reelay dev`; one line per provider in SANDBOXES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar

from service.sandbox.knobs import SandboxKnobs
from service.sandbox.seedancee2 import create_seedancee2_sandbox


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to build a provider's emulator and the credentials Reelay needs to talk to it."""

    factory: Callable[..., Litestar]
    api_key: str
    webhook_secret: str | None = None

    def build(self, knobs: SandboxKnobs | None = None, **kwargs: Any) -> Litestar:
        extra: dict[str, Any] = {"webhook_secret": self.webhook_secret} if self.webhook_secret else {}
        return self.factory(api_key=self.api_key, knobs=knobs, **extra, **kwargs)


SANDBOXES: dict[str, SandboxSpec] = {
    "seedancee2": SandboxSpec(
        factory=create_seedancee2_sandbox,
        api_key="sk_seedancee2_live_sandbox",
        webhook_secret="whsec_seedancee2_sandbox",  # noqa: S106 - a public sandbox-only secret
    ),
}

__all__ = ["SANDBOXES", "SandboxKnobs", "SandboxSpec"]
