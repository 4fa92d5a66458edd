"""What every background loop offers the lifespan, and the simplest loop: a watcher with nothing to drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("reelay.worker")


class Loop(Protocol):
    """Runs until cancelled; on stop, after `run` is cancelled, `drain` settles the work it had in flight."""

    name: str

    async def run(self) -> None:
        """Work until cancelled."""

    async def drain(self, grace_seconds: float) -> None:
        """Let in-flight work finish within `grace_seconds`, then cancel the rest."""


class Watcher:
    """A loop that only watches (the event loop's lag, revoked keys): it holds no work to drain."""

    def __init__(self, name: str, watch: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._watch = watch

    async def run(self) -> None:
        await self._watch()

    async def drain(self, grace_seconds: float) -> None:
        return None


async def finish_within(tasks: set[asyncio.Task[Any]], grace_seconds: float, name: str) -> None:
    """A loop's drain: wait up to `grace_seconds` for its tasks in flight, then cancel the rest and wait for them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(set(tasks), timeout=grace_seconds)
    for task in pending:
        task.cancel()
    if pending:
        log.warning(f"{name}.drain_cancelled", tasks=len(pending))
        await asyncio.gather(*pending, return_exceptions=True)
