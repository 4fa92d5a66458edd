"""/schema/swagger works offline: every asset it loads is served by Reelay itself, from vendored, recorded files."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.api.docs import ASSETS_DIR
from service.app import create_app
from tests.harness import make_settings, serving, url_of
from tests.ports import bind

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}


class _AssetUrls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@asynccontextmanager
async def _reelay(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    sock = bind()
    async with (
        serving(create_app(make_settings(tmp_path)), sock),
        httpx.AsyncClient(base_url=url_of(sock), timeout=10) as client,
    ):
        yield client


async def test_swagger_page_loads_every_asset_from_reelay_itself(tmp_path: Path) -> None:
    async with _reelay(tmp_path) as client:
        page = await client.get("/schema/swagger")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        parser = _AssetUrls()
        parser.feed(page.text)
        fetched = []
        for url in parser.urls:
            parts = urlsplit(url)
            assert not parts.scheme or parts.scheme == "data", url
            assert not parts.netloc, url  # neither absolute nor protocol-relative: served by this host
            if parts.scheme == "data":
                continue
            asset = await client.get(urljoin(str(page.url), url))
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].startswith(CONTENT_TYPES[Path(parts.path).suffix]), url
            fetched.append(Path(parts.path).name)
        csp = page.headers["content-security-policy"]
    assert sorted(fetched) == ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"]
    assert "http" not in csp  # the browser itself refuses anything from elsewhere


async def test_swagger_page_has_no_remote_asset_url(tmp_path: Path) -> None:
    async with _reelay(tmp_path) as client:
        html = (await client.get("/schema/swagger")).text
    # src=, href= and CSS url(), absolute or protocol-relative; the embedded OpenAPI document may name URLs.
    remote = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?(?:https?:)?//""", html)
    assert remote == []
    head = html.split("<body>")[0]
    assert "http://" not in head
    assert "https://" not in head


@pytest.mark.parametrize("ui", ["redoc", "rapidoc", "elements", "scalar", "openapi.yaml"])
async def test_no_other_docs_ui_is_served(tmp_path: Path, ui: str) -> None:
    async with _reelay(tmp_path) as client:
        response = await client.get(f"/schema/{ui}")
    assert response.status_code == 404  # Litestar's other UIs load their code from CDNs


def test_vendored_swagger_files_match_their_recorded_sha256() -> None:
    table = (ASSETS_DIR / "VENDORED.md").read_text()
    recorded = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", table, re.MULTILINE))
    files = [p for p in ASSETS_DIR.iterdir() if p.name != "VENDORED.md"]
    assert recorded == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
