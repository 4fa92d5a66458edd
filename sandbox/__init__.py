"""Sandbox emulators of the providers, for tests and `reelay dev`: each module declares its `SANDBOX`, and one line
here registers it."""

from __future__ import annotations

from sandbox import imini, magnific, mindvideo, minuit, seedancee2
from sandbox.knobs import SandboxKnobs
from sandbox.registry import SandboxSpec, sandbox_registry

SANDBOXES = sandbox_registry(
    seedancee2.SANDBOX,
    minuit.SANDBOX,
    mindvideo.SANDBOX,
    imini.SANDBOX,
    magnific.SANDBOX,
)

__all__ = ["SANDBOXES", "SandboxKnobs", "SandboxSpec", "sandbox_registry"]
