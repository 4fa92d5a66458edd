"""What the browser tests share: the running Reelay and its API, and browser pages that record every request and
leave a screenshot behind when the test fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from sandbox import SandboxKnobs

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Request

TIMEOUT_MS = 10_000  # the longest any expectation waits for the page
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Tab:
    """A page in its own browser context (its own cookies), every URL it requested, and its script errors."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Dashboard:
    url: str
    key: str
    client: httpx.AsyncClient
    browser: Browser
    sandbox_url: str
    elsewhere_url: str  # a page on another origin (tests/browser/elsewhere.py), allowed by REELAY_CORS_ORIGINS
    log: Path
    env: dict[str, str]  # the server's environment, for `reelay keys` commands

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def submit(self, **fields: Any) -> dict[str, Any]:
        body = {"model": "seedancee2/fast", "input": {"prompt": "waves at dawn", "resolution": "480p"}, **fields}
        response = await self.client.post(f"{self.url}/v1/jobs", json=body, headers=self.headers)
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def wait_for(self, job_id: str, done: Any, timeout: float = 15) -> dict[str, Any]:
        """The job once `done(job)` holds."""
        async with asyncio.timeout(timeout):
            while not done(job := await self.job(job_id)):
                await asyncio.sleep(0.05)
        return job

    @asynccontextmanager
    async def knobs(self, knobs: SandboxKnobs) -> AsyncIterator[None]:
        """The emulator misbehaves as `knobs` say, for the block."""
        before = (await self.client.get(f"{self.sandbox_url}/_sandbox/knobs")).json()
        await self.client.put(f"{self.sandbox_url}/_sandbox/knobs", content=msgspec.json.encode(knobs))
        try:
            yield
        finally:
            await self.client.put(f"{self.sandbox_url}/_sandbox/knobs", json=before)

    @asynccontextmanager
    async def tab(self, tmp_path: Path, *, signed_in: bool = True, url: str | None = None) -> AsyncIterator[Tab]:
        """A fresh page on the dashboard (signed in unless told otherwise), or on `url`. If the block fails, a
        screenshot of the page is saved under `tmp_path` and the failure names it."""
        context = await self.browser.new_context(viewport={"width": 1366, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        tab = Tab(page)

        def record(request: Request) -> None:
            tab.requests.append(request.url)

        context.on("request", record)
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        try:
            await page.goto(url or f"{self.url}/dashboard")
            if signed_in and url is None:
                await self.sign_in(page)
            yield tab
        except Exception as exc:
            shot = tmp_path / "failure.png"
            try:
                await page.screenshot(path=str(shot), full_page=True)
                where = f"screenshot of the page: {shot}"
            except Exception as failed:  # the page itself may be what broke
                where = f"no screenshot ({failed})"
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{where}") from exc
        finally:
            await context.close()

    async def sign_in(self, page: Page, key: str | None = None) -> None:
        await page.get_by_label("API key").fill(key or self.key)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("navigation", name="Pages").wait_for()
