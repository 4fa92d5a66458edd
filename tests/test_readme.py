"""The README stands alone, and its Quickstart commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
COMMANDS = re.findall(r"^```sh\n(.*?)\n```$", README, re.MULTILINE | re.DOTALL)


def test_readme_names_nothing_outside_the_repository() -> None:
    assert "../shared" not in README
    assert "../" not in README  # a clone has nothing beside itself
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target


def test_quickstart_installs_reelay_without_the_dev_extras() -> None:
    assert COMMANDS[0] == "python3 -m venv .venv && .venv/bin/pip install -e ./signing -e . && .venv/bin/reelay dev"


def test_ci_runs_the_readme_test_command() -> None:
    test_command = COMMANDS[1]
    assert test_command == ".venv/bin/pip install -e ./signing -e '.[dev]' && .venv/bin/pytest"
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_ci_proves_reelay_signing_installs_alone() -> None:
    assert "bash .ci/signing-alone.sh" in (ROOT / ".ci" / "run").read_text().splitlines()
