"""Operator statements: status counts, prune, the test helpers' statements, metrics' depths."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from ._base import Area
from .core import PRIORITY_LEVELS

# $1 name prefix. The scratch databases of one test session (pgqueue.testing), to drop them.
SCRATCH_DATABASES = "SELECT datname FROM pg_database WHERE starts_with(datname, $1)"


async def scratch_databases(conn: asyncpg.Connection, prefix: str) -> list[str]:
    """Names of the databases starting with ``prefix`` (no schema involved)."""
    return [row[0] for row in await conn.fetch(SCRATCH_DATABASES, prefix)]


class AdminQueries(Area):
    """Status, prune, pgqueue.testing and metrics' statements, for one schema."""

    # Exact counts of the active states, each arm read through its partial index
    # (outbox_ready_idx, outbox_lease_idx, and outbox_final_type_idx for dead, discarded and
    # cancelled): these sets stay small in a healthy queue, so this costs the same
    # with 1,000 or 100,000,000 done events kept.
    ACTIVE_COUNTS = """
SELECT event_type, 'pending' AS state, count(*) AS events,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_ready_age
FROM {s}.outbox WHERE state = 'pending' GROUP BY event_type
UNION ALL
SELECT event_type, 'running', count(*), NULL FROM {s}.outbox
WHERE state = 'running' GROUP BY event_type
UNION ALL
SELECT event_type, 'dead', count(*), NULL FROM {s}.outbox
WHERE state = 'dead' GROUP BY event_type
UNION ALL
SELECT event_type, 'discarded', count(*), NULL FROM {s}.outbox
WHERE state = 'discarded' GROUP BY event_type
UNION ALL
SELECT event_type, 'cancelled', count(*), NULL FROM {s}.outbox
WHERE state = 'cancelled' GROUP BY event_type
"""

    async def active_counts(self, conn: asyncpg.Connection) -> list[Any]:
        """Pending / running / dead counts per event type, with the oldest ready age."""
        return list(await conn.fetch(self.ACTIVE_COUNTS))

    # Done events per type are most of the table and have no index by type: an exact count reads
    # the table (in parallel where the server allows).
    DONE_COUNTS = """
SELECT event_type, count(*) AS events FROM {s}.outbox WHERE state = 'done' GROUP BY event_type
"""

    # $1 percent of the table's pages to read. An estimate of DONE_COUNTS at a bounded cost:
    # TABLESAMPLE SYSTEM reads only the sampled pages, and the counts are scaled up. (A sample
    # scan is not parallel: at 100 % it took 870-1050 ms on 1,000,000 rows where DONE_COUNTS took
    # 210-295 ms, so exact counts keep their own statement.)
    DONE_COUNTS_SAMPLED = """
SELECT event_type, round(count(*) * 100 / $1::float8)::bigint AS events
FROM {s}.outbox TABLESAMPLE SYSTEM ($1::float8)
WHERE state = 'done'
GROUP BY event_type
"""

    async def done_counts(
        self, conn: asyncpg.Connection, percent: float | None = None
    ) -> list[Any]:
        """Done events per type: exact, or counted on ``percent`` % of the pages and scaled."""
        if percent is None:
            return list(await conn.fetch(self.DONE_COUNTS))
        return list(await conn.fetch(self.DONE_COUNTS_SAMPLED, percent))

    # The planner's row count of the outbox (kept by autovacuum / ANALYZE; -1 before the first).
    OUTBOX_ROWS_ESTIMATE = """
SELECT reltuples::float8 FROM pg_class WHERE oid = '{s}.outbox'::regclass
"""

    async def outbox_rows_estimate(self, conn: asyncpg.Connection) -> float:
        """The planner's estimate of the outbox's rows (negative: never analyzed)."""
        rows: float = await conn.fetchval(self.OUTBOX_ROWS_ESTIMATE)
        return rows

    DEAD_HANDLERS = """
SELECT o.event_type, h.key AS handler, count(*) AS events
FROM {s}.outbox AS o, jsonb_each(o.handlers) AS h
WHERE o.state = 'dead' AND h.value ->> 'state' = 'dead'
GROUP BY o.event_type, h.key
ORDER BY o.event_type, h.key
"""

    async def dead_handlers(self, conn: asyncpg.Connection) -> list[Any]:
        """Dead counts per event type and handler."""
        return list(await conn.fetch(self.DEAD_HANDLERS))

    # $1 age (interval), $2 include dead events, $3 include discarded events, $4 include
    # cancelled events. What prune would delete.
    PRUNE_COUNT = """
SELECT count(*) FROM {s}.outbox
WHERE (state = 'done' AND processed_at < now() - $1::interval)
   OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
   OR ($3::boolean AND state = 'discarded' AND created_at < now() - $1::interval)
   OR ($4::boolean AND state = 'cancelled' AND created_at < now() - $1::interval)
"""

    async def prune_count(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        include_discarded: bool = False,
        include_cancelled: bool = False,
    ) -> int:
        """How many events a prune with these settings would delete now."""
        count: int = await conn.fetchval(
            self.PRUNE_COUNT, age, include_dead, include_discarded, include_cancelled
        )
        return count

    # $1 age (interval), $2 include dead events, $3 include discarded events, $4 batch size,
    # $5 include cancelled events. One batch, in its own transaction: short transactions keep
    # locks and the xmin horizon short on a busy queue. The effects ledger rows of the deleted
    # events go with them.
    PRUNE_BATCH = """
WITH gone AS (
    DELETE FROM {s}.outbox
    WHERE id IN (
        SELECT id FROM {s}.outbox
        WHERE (state = 'done' AND processed_at < now() - $1::interval)
           OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
           OR ($3::boolean AND state = 'discarded' AND created_at < now() - $1::interval)
           OR ($5::boolean AND state = 'cancelled' AND created_at < now() - $1::interval)
        LIMIT $4
        FOR UPDATE SKIP LOCKED)
    RETURNING id
), ledger AS (
    DELETE FROM {s}.effects WHERE event_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"""

    async def prune_batch(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        limit: int,
        include_discarded: bool = False,
        include_cancelled: bool = False,
    ) -> int:
        """Delete one batch of old events (and their ledger rows); return how many."""
        deleted: int = await conn.fetchval(
            self.PRUNE_BATCH, age, include_dead, include_discarded, limit, include_cancelled
        )
        return deleted

    # -- testing (pgqueue.testing) --------------------------------------------------------------

    # $1 event type (NULL = every type). What pgqueue.testing's assertions look at; test
    # databases are small, so payload matching happens in Python (one matcher for the outbox and
    # the in-process mode).
    TEST_EVENTS = """
SELECT id, event_type, payload::text AS payload, state, queue, run_at, created_at,
       idempotency_key, attempt, handlers::text AS handlers, last_error
FROM {s}.outbox
WHERE $1::text IS NULL OR event_type = $1::text
ORDER BY id
"""

    async def test_events(self, conn: asyncpg.Connection, event_type: str | None) -> list[Any]:
        """Every outbox row (of ``event_type`` when given), by id, for pgqueue.testing."""
        return list(await conn.fetch(self.TEST_EVENTS, event_type))

    # $1 event types, $2 queues. pgqueue.testing.drain(with_scheduled=True): make every pending
    # event of these types and queues due now, delayed events and durable retries alike (Oban's
    # `with_scheduled`).
    # A retry's due time also sits in its handler's record (`not_before`), which the worker
    # honours on its own, so it is removed there too.
    TEST_ADVANCE = """
UPDATE {s}.outbox AS o
SET run_at = LEAST(o.run_at, now()),
    handlers = (SELECT jsonb_object_agg(h.key, h.value - 'not_before')
                FROM jsonb_each(o.handlers) AS h)
WHERE o.state = 'pending' AND o.event_type = ANY($1::text[]) AND o.queue = ANY($2::text[])
  AND (o.run_at > now() OR o.handlers @? '$.*.not_before')
RETURNING o.id
"""

    async def test_advance(
        self, conn: asyncpg.Connection, event_types: Sequence[str], queues: Sequence[str]
    ) -> int:
        """Make the scheduled pending events of these types and queues due now; return how
        many (pgqueue.testing only)."""
        return len(await conn.fetch(self.TEST_ADVANCE, list(event_types), list(queues)))

    # -- observe --------------------------------------------------------------------------------

    # $1 queues, $2 limit. Per queue: pending events that are due and that are due later, each
    # counted up to $2 per priority level, and the age of the oldest due one. Every subquery is
    # one range of outbox_ready_idx (queue, priority, run_at, id) WHERE state = 'pending' and
    # stops at the limit, so a scrape reads a bounded number of index entries per queue and
    # level however deep the backlog (no full count).
    QUEUE_DEPTHS = (
        """
SELECT q.queue, sum(l.ready)::bigint AS ready, sum(l.scheduled)::bigint AS scheduled,
       extract(epoch FROM now() - min(l.oldest))::float8 AS oldest_ready_age
FROM unnest($1::text[]) AS q(queue) CROSS JOIN """
        + PRIORITY_LEVELS
        + """ CROSS JOIN LATERAL (
    SELECT (SELECT count(*) FROM (SELECT 1 FROM {s}.outbox
                WHERE state = 'pending' AND queue = q.queue AND priority = p.priority
                  AND run_at <= now() LIMIT $2) AS r) AS ready,
           (SELECT count(*) FROM (SELECT 1 FROM {s}.outbox
                WHERE state = 'pending' AND queue = q.queue AND priority = p.priority
                  AND run_at > now() LIMIT $2) AS f) AS scheduled,
           (SELECT run_at FROM {s}.outbox
                WHERE state = 'pending' AND queue = q.queue AND priority = p.priority
                  AND run_at <= now() ORDER BY run_at LIMIT 1) AS oldest
) AS l
GROUP BY q.queue
"""
    )

    async def queue_depths(
        self, conn: asyncpg.Connection, queues: Sequence[str], limit: int
    ) -> list[Any]:
        """Per queue: ready and scheduled pending events (each counted up to ``limit``) and
        the oldest ready age in seconds (None when nothing is ready)."""
        return list(await conn.fetch(self.QUEUE_DEPTHS, list(queues), limit))

    # $1 limit. Dead events per type, from outbox_final_type_idx; at most $1 rows are read.
    DEAD_COUNTS = """
SELECT event_type, count(*) AS events
FROM (SELECT event_type FROM {s}.outbox WHERE state = 'dead' LIMIT $1) AS d
GROUP BY event_type
"""

    async def dead_counts(self, conn: asyncpg.Connection, limit: int) -> list[Any]:
        """Dead events per event type, reading at most ``limit`` rows."""
        return list(await conn.fetch(self.DEAD_COUNTS, limit))
