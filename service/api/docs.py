"""The API docs page: Swagger UI from files vendored in the package, so `/schema/swagger` works offline."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

ASSETS_DIR = Path(__file__).resolve().parent.parent / "static" / "swagger-ui"
ASSETS_PATH = "/static/swagger-ui"


def swagger_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at /schema/swagger, loading nothing from outside Reelay (Litestar's default is a CDN)."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon="<link rel='icon' href='data:,'>",  # the default favicon is on a CDN too
    )


def swagger_assets() -> Router:
    return create_static_files_router(ASSETS_PATH, [ASSETS_DIR], name="swagger-ui")
