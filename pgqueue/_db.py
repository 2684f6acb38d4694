"""Opening connections, with connection failures turned into one-line errors.

Transaction-mode poolers (PgBouncer, pgcat, Supavisor, RDS Proxy) hand each transaction to
whichever server connection is free. What lives in a session therefore does not survive from
one statement to the next: named prepared statements (asyncpg's statement cache), ``SET``,
session advisory locks, LISTEN. PgBouncer also refuses startup parameters it does not know.
Pools opened with ``pooled=True`` rely on none of these.
"""

from __future__ import annotations

import logging
import socket
from types import MappingProxyType
from typing import Any

import asyncpg

from ._errors import ConfigurationError, DatabaseUnavailableError
from ._settings import mask_dsn

log = logging.getLogger("pgqueue")

# The worker's claim, completion and lease statements, on a direct connection.
CONTROL_SETTINGS = MappingProxyType(
    {
        # Custom plans for every execution: the batch statements take arrays whose size the
        # planner must see (a generic plan guesses 10 rows and may hash the whole table).
        # Through a pooler the cache is off: every statement is parsed (and planned) afresh.
        "plan_cache_mode": "force_custom_plan",
        # Claims, outcomes and leases only: if the server crashes before one of these commits
        # reaches disk, the event simply runs again (delivery is at least once). Handlers' own
        # writes (ctx.pool) keep the server's setting. Measured: +10% drain with batches of 1000,
        # more with small batches. A pooler drops it: set it per role instead (docs/operations.md).
        "synchronous_commit": "off",
    }
)


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
    if isinstance(exc, asyncpg.ProtocolViolationError) and "startup parameter" in str(exc):
        return ConfigurationError(
            f"{where} refused a connection setting ({exc}): it looks like a connection pooler "
            "such as PgBouncer; run the worker with --pooled"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseUnavailableError(f"cannot connect to {where}: {exc}")
    return DatabaseUnavailableError(f"cannot connect to {where}: {type(exc).__name__}: {exc}")


async def connect(dsn: str, *, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection:
    """Open one connection, or raise a PgQueueError that says what to do.

    Without a statement cache unless ``kwargs`` asks for one: these connections (CLI commands,
    the listener) run each statement a handful of times, and so they also work through a
    transaction-mode pooler.
    """
    kwargs.setdefault("statement_cache_size", 0)
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


def pool_options(*, pooled: bool, control: bool, generic: bool = False) -> dict[str, Any]:
    """asyncpg pool options: the worker's control pool (``control``) or the handler pool;
    ``generic``: the claim's own connection, whose one statement keeps a generic plan."""
    if pooled:
        # asyncpg then sends every statement as an unnamed one, parsed in the same round trip
        # as its execution: nothing is left on the server connection for the next transaction.
        return {"statement_cache_size": 0}
    if not control:
        return {}
    settings = dict(CONTROL_SETTINGS)
    if generic:
        # The claim takes no arrays whose size matters (its LIMIT bounds every level's index
        # range), so one generic plan serves it, and planning was half of a small claim:
        # 0.19 ms planning, 0.14 ms execution; 720-820 -> 580-605 us per 1-row claim
        # (python -m bench.claim_probe). That is the idle worker's commit-to-handler latency.
        settings["plan_cache_mode"] = "force_generic_plan"
        # A generic plan is made once, from the statistics of that moment: made on an empty
        # outbox it read the table sequentially and, as the table grew, each claim took up to
        # 1 s (sustained 10k ev/s fell 230,000 events behind). Index paths only, then.
        settings["enable_seqscan"] = "off"
        settings["enable_bitmapscan"] = "off"
    return {"server_settings": settings}


async def behind_pooler(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` goes through a connection pooler rather than straight to PostgreSQL.

    A pooler answers the client's startup with a cancel key of its own, so the process id it
    announces is not the one of the server session that runs our queries.
    """
    backend: int = await conn.fetchval("SELECT pg_backend_pid()")
    announced: int = conn.get_server_pid()
    return backend != announced


async def warn_if_pooler(conn: asyncpg.Connection, dsn: str, consequence: str) -> None:
    """Log a warning saying ``consequence`` when ``conn`` goes through a pooler.

    Only a warning: a session-mode pooler keeps sessions and is fine, and no client can ask
    PgBouncer which mode it runs in.
    """
    if await behind_pooler(conn):
        log.warning("%s goes through a connection pooler: %s", mask_dsn(dsn), consequence)
