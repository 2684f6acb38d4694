"""SQLAlchemy 2: ``Session``, ``Connection``, ``AsyncSession``, ``AsyncConnection`` and the
scoped proxies of the sessions (extra ``[sqlalchemy]``).

Always through the object's own ``execute``, never the driver connection underneath: the
session begins its transaction at its first statement (SQLAlchemy "autobegin"), so an event
written first thing inside ``async with session.begin():`` belongs to that transaction. (A
raw asyncpg connection taken from under the session autocommitted there: the transaction
had not begun yet.) Inside ``begin_nested()`` the event is in the savepoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, TextClause, text
from sqlalchemy.orm import Session, scoped_session

from .._queries.plans import Rows, by_name, named


@lru_cache(maxsize=128)
def _clause(statement: str) -> TextClause:
    # text() parses the statement for its parameters: once per statement, not per call.
    return text(named(statement))


def adapt(conn: Any) -> tuple[bool, Any] | None:
    """(is async, fetch) for a SQLAlchemy session or connection; None for anything else."""
    if isinstance(conn, scoped_session):
        conn = conn()
    if isinstance(conn, Session | Connection):
        target: Session | Connection = conn

        def fetch(statement: str, args: Sequence[Any]) -> Rows:
            return target.execute(_clause(statement), by_name(args)).all()

        return False, fetch
    # The asyncio extension (and greenlet under it) only when the program uses it.
    if "sqlalchemy.ext.asyncio" in sys.modules:
        return _adapt_async(conn)
    return None


def _adapt_async(conn: Any) -> tuple[bool, Any] | None:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session

    if isinstance(conn, async_scoped_session):
        conn = conn()
    if not isinstance(conn, AsyncSession | AsyncConnection):
        return None
    target: AsyncSession | AsyncConnection = conn

    async def fetch(statement: str, args: Sequence[Any]) -> Rows:
        return (await target.execute(_clause(statement), by_name(args))).all()

    return True, fetch
