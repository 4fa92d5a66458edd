"""Emulator of the Imini API (seed 003): under construction."""

from __future__ import annotations

from typing import Any

from litestar import Litestar


def create_imini_sandbox(**kwargs: Any) -> Litestar:
    raise NotImplementedError("the Imini sandbox is not written yet")
