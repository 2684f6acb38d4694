"""Django: ``django.db.connection`` or ``django.db.connections[alias]`` (extra ``[django]``).

A cursor of the caller's connection: inside ``transaction.atomic()`` the event commits with
the block, a nested ``atomic()`` is a savepoint, and outside any block Django autocommits it
like every other query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy

from .._queries.plans import Rows, by_name, pyformat


def adapt(conn: Any) -> tuple[bool, Any] | None:
    """(False, fetch) for a Django connection to PostgreSQL; None for anything else."""
    if isinstance(conn, ConnectionProxy):  # django.db.connection: the default alias
        conn = conn._connections[conn._alias]
    if not isinstance(conn, BaseDatabaseWrapper):
        return None
    if conn.vendor != "postgresql":
        raise TypeError(
            f"Django connection {conn.alias!r} is {conn.vendor}: pgqueue needs a PostgreSQL "
            "database (ENGINE django.db.backends.postgresql)"
        )
    wrapper: Any = conn

    def fetch(statement: str, args: Sequence[Any]) -> Rows:
        with wrapper.cursor() as cursor:
            cursor.execute(pyformat(statement), by_name(args))
            rows: Rows = cursor.fetchall() if cursor.description is not None else []
            return rows

    return False, fetch
