"""Statements of worker presence (the ``workers`` table, sql/0011_workers.sql)."""

from __future__ import annotations

from typing import Any

import asyncpg

from ._base import Area


class PresenceQueries(Area):
    """The presence statements, for one schema."""

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
            self.ANNOUNCE,
            worker_id,
            host,
            pid,
            version,
            queues,
            event_types,
            lease_seconds,
            in_flight,
        )

    # $1 worker id. A worker that stops says so.
    LEAVE = "DELETE FROM {s}.workers WHERE worker_id = $1"

    async def leave(self, conn: asyncpg.Connection, worker_id: str) -> None:
        """Delete this worker's row."""
        await conn.execute(self.LEAVE, worker_id)

    # The workers alive now (lease not expired), oldest first, with the database clock.
    ALIVE = """
SELECT worker_id, host, pid, version, queues, event_types, started_at, heartbeat_at,
       expires_at, in_flight, now() AS db_now
FROM {s}.workers
WHERE expires_at > now()
ORDER BY started_at, worker_id
"""

    async def alive(self, conn: asyncpg.Connection) -> list[Any]:
        """The rows of workers whose lease has not expired."""
        return list(await conn.fetch(self.ALIVE))
