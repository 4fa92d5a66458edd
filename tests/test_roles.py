"""Server roles: what each serves, and that splitting roles is refused on SQLite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.app import create_app
from service.errors import ConfigError
from service.settings import Settings
from tests.processes import REELAY

PG = "postgresql://reelay@127.0.0.1:5432/reelay"


def _paths(role: str) -> set[str]:
    app = create_app(Settings(database_url=PG), role=role)  # type: ignore[arg-type]
    return set(app.openapi_schema.to_schema()["paths"])


def test_worker_serves_only_probes_and_metrics() -> None:
    assert _paths("worker") == {"/healthz", "/readyz", "/metrics"}


@pytest.mark.parametrize("role", ["api", "all"])
def test_api_and_all_serve_the_whole_api(role: str) -> None:
    assert {"/v1/jobs", "/v1/events", "/webhooks/{provider}", "/healthz"} <= _paths(role)


@pytest.mark.parametrize("role", ["api", "worker"])
def test_split_roles_need_postgresql(role: str) -> None:
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        create_app(Settings(), role=role)  # type: ignore[arg-type]


def test_cli_refuses_a_split_role_on_sqlite_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "REELAY_ROLE": "api"}
    result = subprocess.run([REELAY, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--role api needs PostgreSQL" in result.stderr
    assert "Traceback" not in result.stderr
