"""Statements of periodic events (the ``schedules`` table)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from ._base import Area


class ScheduleQueries(Area):
    """The schedules' statements, for one schema."""

    # $1 name, $2 expression, $3 time zone, $4 event type, $5 payload (JSON text), $6 queue,
    # $7 priority. A worker registers its code's schedules at start. A changed expression or time
    # zone restarts the schedule from now (its first tick is the next one of the new expression:
    # no catch-up of ticks the new expression would have had before it existed). Returns the
    # previous expression and time zone (NULL: the schedule is new).
    UPSERT_SCHEDULE = """
WITH old AS (SELECT expression, timezone FROM {s}.schedules WHERE name = $1)
INSERT INTO {s}.schedules AS sc (name, expression, timezone, event_type, payload, queue, priority)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
ON CONFLICT (name) DO UPDATE SET
    expression = EXCLUDED.expression, timezone = EXCLUDED.timezone,
    event_type = EXCLUDED.event_type, payload = EXCLUDED.payload, queue = EXCLUDED.queue,
    priority = EXCLUDED.priority, synced_at = now(),
    last_tick = CASE
        WHEN (sc.expression, sc.timezone) IS DISTINCT FROM (EXCLUDED.expression, EXCLUDED.timezone)
        THEN greatest(now(), sc.last_tick) ELSE sc.last_tick END
RETURNING (SELECT expression FROM old) AS old_expression,
          (SELECT timezone FROM old) AS old_timezone, sc.last_tick
"""

    async def upsert_schedule(
        self,
        conn: asyncpg.Connection,
        name: str,
        expression: str,
        timezone: str,
        event_type: str,
        payload_json: str,
        queue: str,
        priority: int,
    ) -> Any:
        """Create or update one schedule; return (old_expression, old_timezone, last_tick)."""
        return await conn.fetchrow(
            self.UPSERT_SCHEDULE,
            name,
            expression,
            timezone,
            event_type,
            payload_json,
            queue,
            priority,
        )

    # $1 name, $2 tick, $3 expression, $4 time zone, $5 tick as ISO text, $6 idempotency key.
    # Emits one tick, exactly once among any number of workers: the UPDATE moves last_tick forward
    # only if nobody did yet (a racing worker blocks on the row, re-checks `last_tick < $2` after
    # the winner commits, and matches nothing), and the INSERT takes the event from the updated
    # row in the same statement, so both commit or neither does. The expression and time zone
    # must match, so a worker still running older code (a rolling deploy) emits nothing for a
    # schedule whose definition has changed. The key `cron:<name>:<tick>` also makes a replayed
    # tick a no-op. The event's payload is the schedule's plus "tick"; its run_at is the tick.
    EMIT_TICK = """
WITH won AS (
    UPDATE {s}.schedules SET last_tick = $2
    WHERE name = $1 AND last_tick < $2 AND expression = $3 AND timezone = $4
    RETURNING event_type, payload, queue, priority
)
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority)
SELECT event_type, payload || jsonb_build_object('tick', $5::text), $2, $6, queue, priority
FROM won
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

    async def emit_tick(
        self,
        conn: asyncpg.Connection,
        name: str,
        tick: dt.datetime,
        expression: str,
        timezone: str,
    ) -> int | None:
        """Emit the event of ``tick`` unless someone did; return its id (None: not ours)."""
        text = tick.astimezone(dt.UTC).isoformat()
        new_id: int | None = await conn.fetchval(
            self.EMIT_TICK, name, tick, expression, timezone, text, f"cron:{name}:{text}"
        )
        return new_id

    # The schedules with the database clock, for `pgqueue schedules`.
    LIST_SCHEDULES = """
SELECT name, expression, timezone, event_type, queue, priority, last_tick, synced_at,
       now() AS db_now
FROM {s}.schedules ORDER BY name
"""

    async def list_schedules(self, conn: asyncpg.Connection) -> list[Any]:
        """Every schedule row, with the database clock as ``db_now``."""
        return list(await conn.fetch(self.LIST_SCHEDULES))

    # $1 name. Forget a schedule (removed from code; a worker that still has it recreates it).
    DELETE_SCHEDULE = "DELETE FROM {s}.schedules WHERE name = $1 RETURNING name"

    async def delete_schedule(self, conn: asyncpg.Connection, name: str) -> bool:
        """Delete one schedule row; False when there was none."""
        return await conn.fetchval(self.DELETE_SCHEDULE, name) is not None
