"""The connection objects ``enqueue``, ``enqueue_many`` and ``once`` accept, by driver.

Each adapter turns the caller's own connection or session into a ``fetch(statement, args)``
that runs one statement *on that object*, so the write joins whatever transaction (or
savepoint) the caller has open there, and never begins or commits one of its own:

- asyncpg ``Connection`` / ``Pool`` (the core driver): here.
- psycopg 3 ``Connection`` / ``AsyncConnection``: ``_psycopg.py`` (extra ``[psycopg]``).
- SQLAlchemy ``Session`` / ``Connection`` / ``AsyncSession`` / ``AsyncConnection`` (and their
  scoped proxies), always through their ``execute``: ``_sqlalchemy.py`` (``[sqlalchemy]``).
- Django ``django.db.connection`` / ``connections[alias]``: ``_django.py`` (``[django]``).

An optional library is looked at only when the caller's program has imported it already
(``sys.modules``): an object of that library cannot exist otherwise, and the core imports
none of them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg

from .._queries.plans import AsyncFetch, Rows, SyncFetch

# (module the caller has imported, our adapter module), tried in this order.
_OPTIONAL = (
    ("psycopg", "._psycopg"),
    ("sqlalchemy", "._sqlalchemy"),
    ("django", "._django"),
)

ASYNC_KINDS = (
    "an asyncpg Connection or Pool, a psycopg AsyncConnection, or a SQLAlchemy AsyncSession "
    "or AsyncConnection"
)
SYNC_KINDS = (
    "a psycopg Connection, a SQLAlchemy Session or Connection, or a Django connection "
    "(django.db.connection or connections[alias])"
)

Adapted = tuple[bool, Any]  # (is the fetch async, fetch)


def _asyncpg(conn: Any) -> Adapted | None:
    # isinstance(pool proxy, asyncpg.Connection) is true too (asyncpg's ConnectionMeta).
    if not isinstance(conn, asyncpg.Connection | asyncpg.Pool):
        return None

    async def fetch(statement: str, args: Sequence[Any]) -> Rows:
        rows: Rows = await conn.fetch(statement, *args)
        return rows

    return True, fetch


def _adapt(conn: Any) -> Adapted | None:
    adapted = _asyncpg(conn)
    if adapted is not None:
        return adapted
    for library, module in _OPTIONAL:
        if library in sys.modules:
            try:
                adapter = importlib.import_module(module, __name__)
            except ImportError as exc:  # a version without what the adapter needs
                raise TypeError(
                    f"pgqueue cannot use this {library} ({exc}); install a supported "
                    f"version: pip install --upgrade {library}"
                ) from exc
            found: Adapted | None = adapter.adapt(conn)
            if found is not None:
                return found
    return None


def _kind(conn: Any) -> str:
    kind = type(conn)
    return f"{kind.__module__}.{kind.__qualname__}"


def async_fetch(conn: Any, call: str) -> AsyncFetch:
    """The awaitable ``fetch`` of ``conn`` for ``pgqueue.<call>``; TypeError for anything
    else, saying what to pass (or to call ``<call>_sync`` for a synchronous connection)."""
    adapted = _adapt(conn)
    if adapted is None:
        raise TypeError(
            f"pgqueue.{call}() takes {ASYNC_KINDS} (or, with pgqueue.{call}_sync(), "
            f"{SYNC_KINDS}), not {_kind(conn)}"
        )
    is_async, fetch = adapted
    if not is_async:
        raise TypeError(
            f"pgqueue.{call}() was given a synchronous {_kind(conn)}: call "
            f"pgqueue.{call}_sync(conn, ...) (no await) with it"
        )
    result: AsyncFetch = fetch
    return result


def sync_fetch(conn: Any, call: str) -> SyncFetch:
    """The blocking ``fetch`` of ``conn`` for ``pgqueue.<call>_sync``; TypeError for anything
    else, saying what to pass (or to await ``<call>`` for an asynchronous connection)."""
    adapted = _adapt(conn)
    if adapted is None:
        raise TypeError(
            f"pgqueue.{call}_sync() takes {SYNC_KINDS} (or, with await pgqueue.{call}(), "
            f"{ASYNC_KINDS}), not {_kind(conn)}"
        )
    is_async, fetch = adapted
    if is_async:
        raise TypeError(
            f"pgqueue.{call}_sync() was given an asynchronous {_kind(conn)}: call "
            f"await pgqueue.{call}(conn, ...) with it"
        )
    result: SyncFetch = fetch
    return result


def database_error(exc: BaseException) -> tuple[str, str | None, str] | None:
    """(SQLSTATE, constraint name, primary message) of a server error raised by any of the
    drivers above, looking through SQLAlchemy's and Django's wrappers to the driver's own
    error (the innermost one that has a SQLSTATE); None for anything else. Never the DETAIL
    line: it would echo the row, payload included."""
    found: tuple[str, str | None, str] | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str):
            diag = getattr(current, "diag", None)  # psycopg 2 and 3
            if diag is not None:
                message = diag.message_primary
                constraint = diag.constraint_name
            else:  # asyncpg
                message = getattr(current, "message", None)
                constraint = getattr(current, "constraint_name", None)
            found = (sqlstate, constraint, message or type(current).__name__)
        # SQLAlchemy keeps the driver's error in .orig, Django (and asyncpg adapters) in
        # __cause__.
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return found
