from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import Stack, stack


@pytest.fixture
async def seedance(tmp_path: Path) -> AsyncIterator[Stack]:
    """Reelay plus the Seedancee2 emulator, over real HTTP on loopback."""
    async with stack(tmp_path) as running:
        yield running
