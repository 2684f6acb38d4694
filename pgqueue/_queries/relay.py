"""The relay's one statement: the identity of this database, fetched once per worker.

Outbox ids are unique within one database only; a relay's dedupe id prefixes the event id with
this identity, so two databases (two services, a clone, a restored copy on another cluster)
feeding one stream never collide. ``pg_control_system()`` needs no special privilege.
"""

from __future__ import annotations

import asyncpg

SOURCE_IDENTITY = """
SELECT s.system_identifier::text, d.oid::bigint
FROM pg_control_system() AS s, pg_database AS d
WHERE d.datname = current_database()
"""


async def source_identity(conn: asyncpg.Connection, schema: str) -> str:
    """``pgq.<system identifier>.<database oid>.<schema>``: the prefix of every dedupe id."""
    row = await conn.fetchrow(SOURCE_IDENTITY)
    return f"pgq.{row[0]}.{row[1]}.{schema}"
