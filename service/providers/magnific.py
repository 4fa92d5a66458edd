"""Magnific adapter (seed 004): under construction; it registers no model until it is complete."""

from __future__ import annotations

from typing import ClassVar

from service.providers.base import HttpProvider, ModelSpec


class Magnific(HttpProvider):
    name: ClassVar[str] = "magnific"
    models: ClassVar[tuple[ModelSpec, ...]] = ()
    unknown_outcome: ClassVar[str] = "fail"
    signs_webhooks: ClassVar[bool] = False
