"""Sandbox emulators of the providers, for tests and `reelay dev`; one line per provider in SANDBOXES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar

from sandbox.imini import create_imini_sandbox
from sandbox.knobs import SandboxKnobs
from sandbox.magnific import create_magnific_sandbox
from sandbox.mindvideo import create_mindvideo_sandbox
from sandbox.minuit import create_minuit_sandbox
from sandbox.seedancee2 import create_seedancee2_sandbox


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to build a provider's emulator and the credentials Reelay needs to talk to it."""

    factory: Callable[..., Litestar]
    api_key: str
    webhook_secret: str | None = None
    # Provider settings Reelay needs for this sandbox (REELAY_<PROVIDER>_<NAME> in production).
    options: dict[str, str] = msgspec.field(default_factory=dict)

    def build(self, knobs: SandboxKnobs | None = None, **kwargs: Any) -> Litestar:
        extra: dict[str, Any] = {"webhook_secret": self.webhook_secret} if self.webhook_secret else {}
        return self.factory(api_key=self.api_key, knobs=knobs, **extra, **kwargs)


# Keys and secrets below are public, sandbox-only values.
SANDBOXES: dict[str, SandboxSpec] = {
    "seedancee2": SandboxSpec(
        factory=create_seedancee2_sandbox,
        api_key="sk_seedancee2_live_sandbox",
        webhook_secret="whsec_seedancee2_sandbox",  # noqa: S106
    ),
    "minuit": SandboxSpec(
        factory=create_minuit_sandbox,
        api_key="mn_live_sandbox",
        options={"moderation": "disabled"},
    ),
    "mindvideo": SandboxSpec(factory=create_mindvideo_sandbox, api_key="mv_live_sandbox"),
    "imini": SandboxSpec(factory=create_imini_sandbox, api_key="sk-imini-sandbox"),
    "magnific": SandboxSpec(
        factory=create_magnific_sandbox,
        api_key="magnific_sandbox_key",
        # Standard Webhooks form: "whsec_" + base64 of the key bytes (here b"magnific-sandbox-secret").
        webhook_secret="whsec_bWFnbmlmaWMtc2FuZGJveC1zZWNyZXQ=",  # noqa: S106
    ),
}

__all__ = ["SANDBOXES", "SandboxKnobs", "SandboxSpec"]
