"""Opening connections, with connection failures turned into one-line errors."""

from __future__ import annotations

import socket
from typing import Any

import asyncpg

from ._errors import ConfigurationError, DatabaseUnavailableError
from ._settings import mask_dsn


def describe_connect_error(dsn: str, exc: BaseException) -> Exception:
    """Map an exception raised while connecting to a PgQueueError with a next step."""
    where = mask_dsn(dsn)
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return DatabaseUnavailableError(
            f"the database refused the login for {where}: {exc}; check the user and password"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseUnavailableError(
            f"{exc} at {where}; create it (createdb) or fix the DSN's database name"
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError | asyncpg.CannotConnectNowError):
        return DatabaseUnavailableError(
            f"the database at {where} is not accepting connections: {exc}"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | TypeError):
        return ConfigurationError(
            f"malformed DSN {where}: {exc}; use postgresql://user:password@host:port/dbname"
        )
    if isinstance(exc, socket.gaierror):
        return DatabaseUnavailableError(f"cannot resolve the host in {where}: {exc}; check --dsn")
    if isinstance(exc, OSError | TimeoutError):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return DatabaseUnavailableError(
            f"cannot reach PostgreSQL at {where} ({reason}); "
            "is the server running and the DSN right?"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseUnavailableError(f"cannot connect to {where}: {exc}")
    return DatabaseUnavailableError(f"cannot connect to {where}: {type(exc).__name__}: {exc}")


async def connect(dsn: str, *, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """Open one connection, or raise a PgQueueError that says what to do."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout, **kwargs)
    except Exception as exc:
        raise describe_connect_error(dsn, exc) from exc


async def create_pool(dsn: str, *, min_size: int, max_size: int, **kwargs: Any) -> asyncpg.Pool:
    """Open a pool, or raise a PgQueueError that says what to do."""
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=10.0, **kwargs
        )
    except Exception as exc:
        raise describe_connect_error(dsn, exc) from exc
    return pool
