"""asyncpg and network errors translated into storage's own exceptions at the edge."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from storage.errors import QueryRejected, StorageUnavailable


class translated:
    """Turns asyncpg driver errors and network errors into StorageUnavailable at the edge, and what the
    request itself made PostgreSQL refuse into QueryRejected."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
            return  # a programming error or a constraint the caller handles; let it through
        # Class 22 (a value it cannot take: NUL in text, a bad escape; also asyncpg's own argument checks) and
        # class 54 (statement too complex) are about the request, not the server.
        if isinstance(exc, asyncpg.DataError | asyncpg.ProgramLimitExceededError) or (
            isinstance(exc, asyncpg.InterfaceError) and "number of query arguments" in str(exc)
        ):
            raise QueryRejected(f"postgresql: {exc}") from exc
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            raise StorageUnavailable(f"postgresql: {exc}") from exc
        if isinstance(exc, OSError | TimeoutError):
            raise StorageUnavailable(f"postgresql: {exc or type(exc).__name__}") from exc
