"""The dashboard in a real Chromium against a real `reelay serve`: sign in and out, a job's row appearing and
finishing live, its video playing, cancelling from its page, and every page loading nothing from another host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from sandbox import SandboxKnobs
from tests.browser.driver import Dashboard, Tab
from tests.processes import REELAY, create_key

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

SLOW = SandboxKnobs(processing_after_s=0.2, complete_after_s=120)  # a job that stays processing while we look


def archived_video(job: dict[str, Any]) -> dict[str, Any] | None:
    assets = (job["output"] or {}).get("assets") or []
    return next((a for a in assets if a["variant"] == "video"), None)


def archive_done(job: dict[str, Any]) -> bool:
    """Whether archiving is over for the job: its video copied, or a copy failed for good, or no output to copy."""
    output = job["output"] or {}
    return archived_video(job) is not None or "archive_error" in output or job["status"] in {"failed", "cancelled"}


async def open_job(dashboard: Dashboard, tab: Tab, job_id: str) -> None:
    await tab.page.goto(f"{dashboard.url}/dashboard#/jobs/{job_id}")
    await tab.page.locator(".summary").wait_for()


async def test_sign_in_with_an_api_key_then_sign_out(dashboard: Dashboard, tmp_path: Path) -> None:
    async with dashboard.tab(tmp_path, signed_in=False) as tab:
        page = tab.page
        await page.get_by_label("API key").fill("rlk_0000000000000000_wrong")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("alert").filter(has_text="not valid").wait_for()

        await dashboard.sign_in(page)
        await page.get_by_role("heading", name="Jobs").wait_for()
        cookie = next(c for c in await page.context.cookies() if c["name"] == "reelay_session")
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert "reelay_session" not in await page.evaluate("document.cookie")  # out of scripts' reach

        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_label("API key").wait_for()
        assert not [c for c in await page.context.cookies() if c["name"] == "reelay_session"]
        answer = await page.evaluate("fetch('/v1/jobs').then(r => r.status)")
        assert answer == 401


async def test_revoking_the_key_signs_the_page_out(dashboard: Dashboard, tmp_path: Path) -> None:
    """Its event stream closes within the key cache window; the page then finds its session gone."""
    key = create_key(dashboard.env)
    async with dashboard.tab(tmp_path, signed_in=False) as tab:
        await dashboard.sign_in(tab.page, key)
        await tab.page.locator("#live.on").wait_for()
        revoke = [REELAY, "keys", "revoke", key.split("_")[1]]
        subprocess.run(revoke, env=dashboard.env, check=True, capture_output=True)
        await tab.page.get_by_role("alert").filter(has_text="session ended").wait_for(timeout=20_000)
        await tab.page.get_by_label("API key").wait_for()


async def test_a_job_submitted_through_the_api_appears_and_succeeds_without_a_reload(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    async with dashboard.tab(tmp_path) as tab:
        page = tab.page
        await page.locator("#live.on").wait_for()  # the event stream is open
        await page.locator("#jobs-body tr").first.wait_for()  # the first page has been read
        await page.evaluate("window.stayed = true")  # gone if the page reloads

        job = await dashboard.submit(metadata={"shot": "live"})
        row = page.locator(f'#jobs-body tr[data-job-id="{job["id"]}"]')
        await row.wait_for()
        await page.locator(f'#jobs-body tr[data-job-id="{job["id"]}"][data-status="succeeded"]').wait_for()
        assert await row.locator(".status").inner_text() == "succeeded"
        assert await page.evaluate("window.stayed") is True
        assert (await dashboard.job(job["id"]))["status"] == "succeeded"


async def test_the_job_page_plays_its_video(dashboard: Dashboard, tmp_path: Path) -> None:
    """The archived copy, served by Reelay itself."""
    job = await dashboard.wait_for((await dashboard.submit())["id"], archive_done)
    asset = archived_video(job)
    assert asset is not None, job
    expected = urlsplit(asset["url"]).path
    async with dashboard.tab(tmp_path) as tab:
        await open_job(dashboard, tab, job["id"])
        await tab.page.wait_for_function("() => document.querySelector('#video')?.readyState >= 2")
        src = await tab.page.locator("#video").get_attribute("src")
        assert src is not None
        if expected.startswith("/"):  # the archived copy, from Reelay itself, freshly signed
            assert src.startswith(dashboard.url + expected), src
            assert parse_qs(urlsplit(src).query)["variant"] == ["video"]
        else:
            assert src == expected


async def test_cancel_a_job_from_its_page(dashboard: Dashboard, tmp_path: Path) -> None:
    async with dashboard.knobs(SLOW), dashboard.tab(tmp_path) as tab:
        job = await dashboard.submit()
        await dashboard.wait_for(job["id"], lambda j: j["provider_task_id"] is not None)
        await open_job(dashboard, tab, job["id"])
        await tab.page.get_by_role("button", name="Cancel job").click()
        await tab.page.locator('.summary [data-status="cancelled"]').wait_for()
        await tab.page.locator('#timeline [data-type="job.cancelled"]').wait_for()
        assert await tab.page.get_by_role("button", name="Cancel job").is_hidden()
    assert (await dashboard.job(job["id"]))["status"] == "cancelled"


async def test_an_older_job_that_changes_state_stays_off_the_first_page(dashboard: Dashboard, tmp_path: Path) -> None:
    """The first page lists the newest jobs, newest first, as GET /v1/jobs does: a job further down the list whose
    status changes stays where it is, and does not push one of the newest off the page."""
    page_size = 50  # the jobs page's (service/static/dashboard/jobs.js)
    async with dashboard.knobs(SLOW):
        old = await dashboard.submit()
        newest = [await dashboard.submit() for _ in range(page_size)]
        await dashboard.wait_for(old["id"], lambda j: j["provider_task_id"] is not None)
    try:
        async with dashboard.tab(tmp_path) as tab:
            page = tab.page
            await page.locator("#live.on").wait_for()
            await page.locator(f'#jobs-body tr[data-job-id="{newest[-1]["id"]}"]').wait_for()
            cancelled = await dashboard.client.post(
                f"{dashboard.url}/v1/jobs/{old['id']}/cancel", headers=dashboard.headers
            )
            assert cancelled.status_code == 200, cancelled.text
            fresh = await dashboard.submit()  # its row shows once the page has had the cancel's event too
            await page.locator(f'#jobs-body tr[data-job-id="{fresh["id"]}"]').wait_for()
            shown = await page.eval_on_selector_all("#jobs-body tr", "rows => rows.map((r) => r.dataset.jobId)")
            assert old["id"] not in shown
            assert shown == sorted(shown, reverse=True)  # newest first, as the API lists them
            assert shown == [fresh["id"], *[j["id"] for j in reversed(newest)]][:page_size]
    finally:
        for job in newest:
            await dashboard.client.post(f"{dashboard.url}/v1/jobs/{job['id']}/cancel", headers=dashboard.headers)


async def test_no_page_requests_anything_from_another_host(dashboard: Dashboard, tmp_path: Path) -> None:
    """Every file and call of every page is Reelay's own (no CDN); the strict CSP is never violated, and no
    script fails."""
    job = await dashboard.wait_for((await dashboard.submit())["id"], archive_done)
    assert archived_video(job) is not None, job  # its video is Reelay's archived copy
    async with dashboard.tab(tmp_path) as tab:
        page = tab.page
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        await page.goto(f"{dashboard.url}/dashboard#/jobs?status=succeeded")
        await page.locator("#jobs-body tr").first.wait_for()
        await open_job(dashboard, tab, job["id"])
        for name, ready in (("Usage", ".chart"), ("Providers", "#providers"), ("Webhooks", "#page form")):
            await page.get_by_role("link", name=name).click()
            await page.locator(ready).first.wait_for()
        async with page.expect_request(f"{dashboard.url}/v1/providers"):
            await page.get_by_role("link", name="Providers").click()
        strangers = [url for url in tab.requests if not url.startswith(f"{dashboard.url}/") and url != "data:,"]
        assert strangers == []
        assert f"{dashboard.url}/dashboard/static/app.js" in tab.requests
        assert f"{dashboard.url}/v1/events" in tab.requests
        assert violations == []
        assert tab.errors == []


async def test_a_failing_browser_test_saves_a_screenshot_and_names_it(dashboard: Dashboard, tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failure:
        async with dashboard.tab(tmp_path, signed_in=False) as tab:
            assert await tab.page.title() == "another page"
    shot = tmp_path / "failure.png"
    assert f"screenshot of the page: {shot}" in str(failure.value)
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_screenshots_of_the_jobs_and_job_pages(dashboard: Dashboard, tmp_path: Path) -> None:
    """The README's pictures, into the test's folder; `REELAY_SCREENSHOTS=docs pytest tests/browser -k screenshots`
    writes them where the README shows them."""
    folder = Path(os.environ.get("REELAY_SCREENSHOTS") or tmp_path)
    jobs = [
        await dashboard.submit(
            model=model, input={"prompt": prompt, "resolution": "480p"}, metadata={"campaign": "spring"}
        )
        for model, prompt in [
            ("seedancee2/fast", "a paper boat on a rainy street"),
            ("seedancee2/pro", "drone shot over a glacier at dawn"),
            ("seedancee2/fast", "a cat chasing a laser pointer"),
            ("seedancee2/pro", "timelapse of a city at night"),
        ]
    ]
    for job in jobs:
        await dashboard.wait_for(job["id"], archive_done)
    async with dashboard.knobs(SLOW), dashboard.tab(tmp_path) as tab:
        slow = await dashboard.submit(input={"prompt": "a slow pan across a library", "resolution": "480p"})
        await dashboard.wait_for(slow["id"], lambda j: j["provider_task_id"] is not None)
        await tab.page.locator("#live.on").wait_for()
        await tab.page.locator(f'#jobs-body tr[data-job-id="{slow["id"]}"]').wait_for()
        await tab.page.screenshot(path=str(folder / "dashboard-jobs.png"))
        await open_job(dashboard, tab, jobs[1]["id"])
        await tab.page.wait_for_function("() => document.querySelector('#video')?.readyState >= 2")
        await tab.page.screenshot(path=str(folder / "dashboard-job.png"), full_page=True)
    for name in ("dashboard-jobs.png", "dashboard-job.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG"), name


async def test_a_page_on_another_origin_opens_a_stream_with_a_token(dashboard: Dashboard, tmp_path: Path) -> None:
    """No cookie, no key in the page: the token alone opens the job's stream across origins (CORS allows it)."""
    job = await dashboard.submit()
    made = await dashboard.client.post(
        f"{dashboard.url}/v1/stream-tokens", json={"ttl_seconds": 600, "job_id": job["id"]}, headers=dashboard.headers
    )
    assert made.status_code == 201, made.text
    stream = f"/v1/jobs/{job['id']}/events"
    page_url = f"{dashboard.elsewhere_url}/app?{urlencode({'reelay': dashboard.url, 'path': stream})}"
    async with dashboard.tab(tmp_path, url=f"{page_url}&{urlencode({'token': made.json()['token']})}") as tab:
        assert await tab.page.evaluate("location.origin") == dashboard.elsewhere_url != dashboard.url
        await tab.page.wait_for_function("() => window.received.some((e) => e.type === 'job.succeeded')")
        received = await tab.page.evaluate("window.received")
        assert (received[0]["type"], received[-1]["type"]) == ("job.created", "job.succeeded")
        assert {e["job"] for e in received} == {job["id"]}
        assert [int(e["id"]) for e in received] == sorted(int(e["id"]) for e in received)
        assert await tab.page.context.cookies() == []
    async with dashboard.tab(tmp_path, url=page_url) as tab:  # the same page without a token: refused
        await tab.page.wait_for_function("() => window.source.readyState === EventSource.CLOSED")
        assert await tab.page.evaluate("window.received") == []


async def test_the_readmes_event_source_example_closes_after_any_terminal_event(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    """A job's stream ends after its terminal event and a resumed one ends at once, so an EventSource left open
    would reconnect for as long as its token lasts: the README's example must close on a cancel too."""
    async with dashboard.knobs(SLOW):
        job = await dashboard.submit()
        await dashboard.wait_for(job["id"], lambda j: j["provider_task_id"] is not None)
    made = await dashboard.client.post(
        f"{dashboard.url}/v1/stream-tokens", json={"ttl_seconds": 600, "job_id": job["id"]}, headers=dashboard.headers
    )
    assert made.status_code == 201, made.text
    query = urlencode({"reelay": dashboard.url, "job": job["id"], "token": made.json()["token"]})
    async with dashboard.tab(tmp_path, url=f"{dashboard.elsewhere_url}/readme?{query}") as tab:
        await tab.page.wait_for_function("() => window.source.readyState === EventSource.OPEN")
        cancelled = await dashboard.client.post(
            f"{dashboard.url}/v1/jobs/{job['id']}/cancel", headers=dashboard.headers
        )
        assert cancelled.status_code == 200, cancelled.text
        await tab.page.wait_for_function("() => window.rendered.includes('cancelled')")
        await tab.page.wait_for_function("() => window.source.readyState === EventSource.CLOSED")
        assert await tab.page.evaluate("window.reopened") == 0
