"""Emulator of the Magnific API (seed 004): under construction."""

from __future__ import annotations

from typing import Any

from litestar import Litestar


def create_magnific_sandbox(**kwargs: Any) -> Litestar:
    raise NotImplementedError("the Magnific sandbox is not written yet")
