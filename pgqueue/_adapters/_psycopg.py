"""psycopg 3: ``Connection`` and ``AsyncConnection`` (extra ``[psycopg]``).

``conn.execute`` runs on the caller's connection: inside ``with conn.transaction():`` (or a
nested one, a savepoint) the event commits or rolls back with it; on a connection in
autocommit mode it commits at once, like every other statement there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from .._queries.plans import Rows, by_name, pyformat


def adapt(conn: Any) -> tuple[bool, Any] | None:
    """(is async, fetch) for a psycopg connection; None for anything else."""
    if isinstance(conn, psycopg.AsyncConnection):
        aconn: psycopg.AsyncConnection[Any] = conn

        async def fetch_async(statement: str, args: Sequence[Any]) -> Rows:
            cursor = await aconn.execute(pyformat(statement), by_name(args))
            return await cursor.fetchall()

        return True, fetch_async
    if isinstance(conn, psycopg.Connection):
        sconn: psycopg.Connection[Any] = conn

        def fetch(statement: str, args: Sequence[Any]) -> Rows:
            return sconn.execute(pyformat(statement), by_name(args)).fetchall()

        return False, fetch
    return None
