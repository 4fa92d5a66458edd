"""What the /v1 handlers' OpenAPI documents share that Litestar cannot derive from their signatures."""

from __future__ import annotations

from typing import Any

# Every /v1 endpoint takes the API key in either header.
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def text_param(description: str, **schema: Any) -> dict[str, Any]:
    """An optional string parameter: query strings and headers are never JSON null, so it is documented as
    absent-or-string, with the constraints the handler enforces (a value outside them is a 400)."""
    return {"description": description, "schema_extra": {"one_of": None, "type": "string", **schema}}
