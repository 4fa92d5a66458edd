"""The `reelay` command line, run as a user would: keys, migrate, and clear configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from service.ids import split_api_key
from tests.ports import bind

REELAY = str(Path(sys.executable).parent / "reelay")


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "REELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **env}
    return subprocess.run([REELAY, *args], env=environ, capture_output=True, text=True, timeout=60)


def test_keys_are_shown_once_listed_without_secrets_and_revocable(tmp_path: Path) -> None:
    created = _run(tmp_path, "keys", "create", "--name", "billing-service", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("rlk_")
    listed = _run(tmp_path, "keys", "list")
    assert key["id"] in listed.stdout
    assert "billing-service" in listed.stdout
    assert "active" in listed.stdout
    parts = split_api_key(key["key"])
    assert parts is not None
    secret = parts[1]  # url-safe base64 may itself hold "_", so split the documented way
    assert secret not in listed.stdout
    db = (tmp_path / "cli.db").read_bytes()
    assert secret.encode() not in db  # only the hash is stored
    assert _run(tmp_path, "keys", "revoke", key["id"]).returncode == 0
    assert "revoked" in _run(tmp_path, "keys", "list").stdout
    again = _run(tmp_path, "keys", "revoke", key["id"])
    assert again.returncode == 1
    assert "no active key" in again.stderr


def test_keys_carry_budgets_set_at_create_changed_by_update_and_listed(tmp_path: Path) -> None:
    created = _run(tmp_path, "keys", "create", "--name", "team", "--budget-usd", "25.50", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert (key["budget_usd"], key["budget_credits"], key["budget_period"]) == ("25.50", None, "total")
    assert "budget 25.50 usd in total" in _run(tmp_path, "keys", "list").stdout
    updated = _run(tmp_path, "keys", "update", key["id"], "--budget-credits", "5000", "--budget-period", "month")
    assert updated.returncode == 0, updated.stderr
    assert "budget 25.50 usd + 5000 credits per month" in updated.stdout
    cleared = _run(tmp_path, "keys", "update", key["id"], "--budget-usd", "none", "--json")
    assert json.loads(cleared.stdout)["budget_usd"] is None
    assert "budget 5000 credits per month" in _run(tmp_path, "keys", "list").stdout
    _run(tmp_path, "keys", "update", key["id"], "--budget-credits", "none")
    assert "no budget" in _run(tmp_path, "keys", "list").stdout
    assert _run(tmp_path, "keys", "update", "nope", "--budget-usd", "1").returncode == 1


def test_bad_budget_numbers_are_usage_errors_without_a_traceback(tmp_path: Path) -> None:
    for args in (
        ("keys", "create", "--name", "x", "--budget-usd", "ten"),
        ("keys", "create", "--name", "x", "--budget-credits", "-5"),
        ("keys", "create", "--name", "x", "--budget-usd", "NaN"),
        ("keys", "create", "--name", "x", "--budget-period", "day"),  # a period without a limit
        ("keys", "update", "key_x", "--budget-usd", "1e999999999999"),
        ("keys", "update", "key_x"),  # nothing to change
    ):
        result = _run(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "--budget-usd" in _run(tmp_path, "keys", "create", "--name", "x", "--budget-usd", "ten").stderr
    assert "no keys" in _run(tmp_path, "keys", "list").stdout  # nothing was created


def test_migrate_creates_the_schema_and_is_repeatable(tmp_path: Path) -> None:
    for _ in range(2):
        result = _run(tmp_path, "migrate")
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
    assert (tmp_path / "cli.db").exists()


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    result = _run(tmp_path, "keys", "list", REELAY_PORT="eighty")
    assert result.returncode != 0
    assert "REELAY_PORT must be an integer" in result.stderr
    result = _run(tmp_path, "migrate", REELAY_DATABASE_URL="mysql://nope")
    assert result.returncode != 0
    assert "REELAY_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    busy = bind()
    busy.listen()
    port = busy.getsockname()[1]
    try:
        result = _run(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(port))
    finally:
        busy.close()
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_reelay_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = _run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reelay, version {version('reelay')}"


def test_every_database_command_says_which_database_it_uses(tmp_path: Path) -> None:
    expected = f"database: {tmp_path / 'cli.db'}"
    key_id = json.loads(_run(tmp_path, "keys", "create", "--name", "ops", "--json").stdout)["id"]
    for args in (
        ("keys", "create", "--name", "again", "--json"),
        ("keys", "list"),
        ("keys", "revoke", key_id),
        ("migrate",),
        ("prune", "--days", "1", "--dry-run"),
        ("backup", str(tmp_path / "copy.db")),
        ("restore", str(tmp_path / "copy.db"), "--yes"),
    ):
        result = _run(tmp_path, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr.splitlines()[0] == expected, args
        assert expected not in result.stdout, args  # stdout stays parseable (keys create --json)


def test_a_postgresql_database_is_named_without_its_password(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate", REELAY_DATABASE_URL="postgresql://reelay:s3cret@127.0.0.1:1/reelay")
    assert result.returncode == 1  # nothing listens there; the line comes before the attempt
    assert result.stderr.splitlines()[0] == "database: postgresql://reelay:***@127.0.0.1:1/reelay"
    assert "s3cret" not in result.stderr + result.stdout
