"""Emulator of the MindVideo API (seed 001): under construction."""

from __future__ import annotations

from typing import Any

from litestar import Litestar


def create_mindvideo_sandbox(**kwargs: Any) -> Litestar:
    raise NotImplementedError("the MindVideo sandbox is not written yet")
