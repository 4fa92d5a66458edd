"""Numbered plain-SQL migrations, one folder per backend."""

from __future__ import annotations

import functools
from importlib import resources


def load(backend: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration of a backend, in order."""
    return list(_read(backend))


def newest(backend: str) -> int:
    """The schema version the code expects."""
    return max(version for version, _, _ in load(backend))


@functools.cache  # read once per process: readiness probes ask for the newest version every few seconds
def _read(backend: str) -> tuple[tuple[int, str, str], ...]:
    folder = resources.files(__name__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return tuple(sorted(found))
