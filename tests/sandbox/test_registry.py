"""The emulator registry: each emulator module declares the provider it emulates, one emulator per provider."""

from __future__ import annotations

import pytest

from sandbox import SANDBOXES, imini, sandbox_registry
from service.providers import ADAPTERS


def test_every_built_in_provider_has_one_emulator_declared_by_its_module() -> None:
    assert list(SANDBOXES) == list(ADAPTERS)
    assert all(spec.provider == name for name, spec in SANDBOXES.items())


def test_two_emulators_of_one_provider_are_refused() -> None:
    with pytest.raises(ValueError, match="two emulators are declared for provider 'imini'"):
        sandbox_registry(imini.SANDBOX, imini.SANDBOX)
