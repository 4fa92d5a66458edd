"""Retry and polling schedules: pure functions of an attempt number and a random source."""

from __future__ import annotations

import random

import msgspec


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential delays with jitter: `initial * factor**attempt`, capped, then spread by ±jitter."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random, *, at_least: float | None = None, spacing: float = 0.0) -> float:
        """`at_least` is a floor as it is (a Retry-After); `spacing` one spread upward by the jitter (a rate budget's
        share per job), so that the jobs held to it do not come due together."""
        base = min(self.cap, self.initial * self.factor ** max(0, attempt))
        spread = base * rng.uniform(1 - self.jitter, 1 + self.jitter)
        if spacing > 0:  # no draw without it: a schedule without a budget is as it was
            spread = max(spread, spacing * rng.uniform(1, 1 + self.jitter))
        return max(spread, at_least or 0.0)
