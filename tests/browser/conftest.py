"""Real-browser tests: a real `reelay serve` beside in-process emulators, and Debian's Chromium driven by Playwright
through its executable path (Playwright never downloads a browser here).

One server and one browser serve a module; each test gets a fresh browser context (its own cookies). Without
Chromium the tests fail, naming what installs it (`.ci/run` does, with .ci/chromium.sh).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from sandbox import SANDBOXES, SandboxKnobs
from tests.browser.driver import Dashboard
from tests.browser.elsewhere import elsewhere_app
from tests.harness import serving, url_of
from tests.ports import bind, free_ports
from tests.processes import create_key, reelay_env, reelay_serve, wait_ready

# Fast enough for a row to be seen queued, processing and succeeded within a second or two.
KNOBS = SandboxKnobs(processing_after_s=0.2, complete_after_s=0.8)


def chromium_path() -> str:
    for candidate in (os.environ.get("REELAY_TEST_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("no Chromium: run .ci/chromium.sh (apt-get install chromium), or set REELAY_TEST_CHROMIUM")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dashboard(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Dashboard]:
    """`reelay serve` with the Seedancee2 emulator, a key, and a Chromium to look at its dashboard."""
    from playwright.async_api import async_playwright

    executable = chromium_path()
    tmp_path = tmp_path_factory.mktemp("browser")
    sandbox_sock, elsewhere_sock, port = bind(), bind(), free_ports(1)
    sandbox_url, elsewhere_url = url_of(sandbox_sock), url_of(elsewhere_sock)
    env = reelay_env(
        tmp_path,
        port,
        {"seedancee2": sandbox_url},
        REELAY_ASSETS=f"file://{tmp_path / 'assets'}",
        REELAY_WEBHOOK_ALLOW_PRIVATE="true",
        REELAY_CORS_ORIGINS=elsewhere_url,
    )
    url, log = f"http://127.0.0.1:{port}", tmp_path / "reelay.log"
    key = create_key(env)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        serving(SANDBOXES["seedancee2"].build(KNOBS), sandbox_sock),
        serving(elsewhere_app, elsewhere_sock),
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=executable)
        try:
            with reelay_serve(env, log) as process:
                await wait_ready(client, url, process)
                yield Dashboard(
                    url=url,
                    key=key,
                    client=client,
                    browser=browser,
                    sandbox_url=sandbox_url,
                    elsewhere_url=elsewhere_url,
                    log=log,
                    env=env,
                )
        finally:
            await browser.close()
