"""sqlite3 and file-system errors translated into storage's own exceptions at the edge."""

from __future__ import annotations

import sqlite3

from storage.errors import QueryRejected, StorageUnavailable

# SQLite's own limits on one statement (SQLITE_ERROR, like a real fault): what the request asked was too big.
_LIMIT_MESSAGES = (
    "expression tree is too large",
    "too many sql variables",
    "too many terms in compound select",
    "too many arguments on function",
    "like or glob pattern too complex",
    "parser stack overflow",
    "string or blob too big",
)


class translated:
    """Turns sqlite3 driver errors and file-system errors into StorageUnavailable at the edge, and what the
    request itself made SQLite refuse into QueryRejected."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.IntegrityError):
            return  # a programming error or a constraint the caller handles; let it through
        # DataError is SQLITE_TOOBIG; OverflowError and UnicodeEncodeError come from binding a value (a huge
        # integer, a lone surrogate) that SQLite cannot hold.
        if isinstance(exc, sqlite3.DataError | OverflowError | UnicodeEncodeError) or (
            isinstance(exc, sqlite3.OperationalError) and str(exc).lower().startswith(_LIMIT_MESSAGES)
        ):
            raise QueryRejected(f"sqlite: {exc}") from exc
        if isinstance(exc, sqlite3.Error):
            raise StorageUnavailable(f"sqlite: {exc}") from exc
        if isinstance(exc, OSError):
            raise StorageUnavailable(str(exc)) from exc
