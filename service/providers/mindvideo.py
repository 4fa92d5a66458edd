"""MindVideo adapter (seed 001): under construction; it registers no model until it is complete."""

from __future__ import annotations

from typing import ClassVar

from service.providers.base import HttpProvider, ModelSpec


class MindVideo(HttpProvider):
    name: ClassVar[str] = "mindvideo"
    models: ClassVar[tuple[ModelSpec, ...]] = ()
    unknown_outcome: ClassVar[str] = "fail"
    signs_webhooks: ClassVar[bool] = False
