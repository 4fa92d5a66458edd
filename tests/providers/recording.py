"""A scripted upstream for adapter tests: an httpx MockTransport that records each request it answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from service.settings import ProviderSettings

A = TypeVar("A")
Answer = Callable[[httpx.Request], httpx.Response]


class Recorder(Generic[A]):
    """Records each request an adapter sends and answers it with `answer`."""

    def __init__(
        self, provider: Callable[[ProviderSettings, httpx.AsyncClient], A], settings: ProviderSettings, answer: Answer
    ) -> None:
        self.requests: list[httpx.Request] = []
        self._provider = provider
        self._settings = settings
        self._answer = answer

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._answer(request)

    def adapter(self, settings: ProviderSettings | None = None) -> A:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return self._provider(settings or self._settings, client)

    def sent(self) -> dict[str, Any]:
        """The JSON body of the one request sent."""
        assert len(self.requests) == 1
        decoded: dict[str, Any] = msgspec.json.decode(self.requests[0].content)
        return decoded
