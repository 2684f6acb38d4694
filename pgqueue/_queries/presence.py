"""Statements of worker presence (the ``workers`` table, sql/0011_workers.sql)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import asyncpg

from .._settings import quote_ident

# $1 worker id, $2 host, $3 pid, $4 version, $5 queues, $6 event types, $7 lease (seconds),
# $8 in flight. Announce (first call) or renew (every heartbeat) one worker; the same
# statement sweeps rows of workers dead for over an hour (a handful at most: the table holds
# one row per worker process).
ANNOUNCE = """
WITH gone AS (
    DELETE FROM {s}.workers WHERE expires_at < now() - interval '1 hour'
)
INSERT INTO {s}.workers AS w
    (worker_id, host, pid, version, queues, event_types, expires_at, in_flight)
VALUES ($1, $2, $3, $4, $5::text[], $6::text[], now() + make_interval(secs => $7), $8)
ON CONFLICT (worker_id) DO UPDATE
SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at, in_flight = EXCLUDED.in_flight
"""

# $1 worker id. A worker that stops says so.
LEAVE = "DELETE FROM {s}.workers WHERE worker_id = $1"

# The workers alive now (lease not expired), oldest first, with the database clock.
ALIVE = """
SELECT worker_id, host, pid, version, queues, event_types, started_at, heartbeat_at,
       expires_at, in_flight, now() AS db_now
FROM {s}.workers
WHERE expires_at > now()
ORDER BY started_at, worker_id
"""


@lru_cache(maxsize=32)
def presence_queries_for(schema: str) -> PresenceQueries:
    """The presence statements for ``schema``."""
    return PresenceQueries(schema)


class PresenceQueries:
    """The presence statements above, with the schema filled in."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.announce_sql = ANNOUNCE.format(s=s)
        self.leave_sql = LEAVE.format(s=s)
        self.alive_sql = ALIVE.format(s=s)

    async def announce(
        self,
        conn: asyncpg.Connection,
        worker_id: str,
        host: str,
        pid: int,
        version: str,
        queues: list[str],
        event_types: list[str],
        lease_seconds: float,
        in_flight: int,
    ) -> None:
        """Insert or renew this worker's row."""
        await conn.execute(
            self.announce_sql,
            worker_id,
            host,
            pid,
            version,
            queues,
            event_types,
            lease_seconds,
            in_flight,
        )

    async def leave(self, conn: asyncpg.Connection, worker_id: str) -> None:
        """Delete this worker's row."""
        await conn.execute(self.leave_sql, worker_id)

    async def alive_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """The rows of workers whose lease has not expired."""
        return list(await conn.fetch(self.alive_sql))
