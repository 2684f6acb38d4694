"""Statements of the web dashboard's pages that the CLI has no equivalent of: the overview by
queue and type, the throughput chart, dead events grouped by handler, cancelling a pending
event. Every other page and action calls the library functions the CLI calls.

Each statement reads a bounded number of index entries or rows, whatever the table's size
(`bin/bench --only dashboard` measures every page on 1,000,000 events with 100,000 dead).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ._base import Area


class DashboardQueries(Area):
    """The dashboard's own statements, for one schema."""

    # Per queue and event type: pending (with the oldest ready age), running and dead events, and
    # events done in the last minute. Each arm reads one partial index (ready, lease, dead,
    # processed) and, for pending events, the rows it points at; dead ones are counted from
    # outbox_dead_list_idx alone (it carries queue and type). The cost follows the active sets,
    # never the done rows kept: 28 ms of backend CPU with 100,000 dead and 18,000 pending among
    # 1,000,000 rows (with the chart's statement; bin/bench --only dashboard).
    OVERVIEW_COUNTS = """
SELECT queue, event_type, 'pending' AS state, count(*) AS events,
       extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
           AS oldest_ready_age
FROM {s}.outbox WHERE state = 'pending' GROUP BY queue, event_type
UNION ALL
SELECT queue, event_type, 'running', count(*), NULL FROM {s}.outbox
WHERE state = 'running' GROUP BY queue, event_type
UNION ALL
SELECT queue, event_type, 'dead', count(*), NULL FROM {s}.outbox
WHERE state = 'dead' GROUP BY queue, event_type
UNION ALL
SELECT queue, event_type, 'done', count(*), NULL FROM {s}.outbox
WHERE state = 'done' AND processed_at > now() - interval '1 minute'
GROUP BY queue, event_type
"""

    async def overview_counts(self, conn: asyncpg.Connection) -> list[Any]:
        """(queue, event_type, state, events, oldest_ready_age) rows; state 'done' counts
        the last minute."""
        return list(await conn.fetch(self.OVERVIEW_COUNTS))

    # $1 cap per minute. Events done per minute over the last hour (60 buckets, the current
    # minute last). Each bucket reads at most $1 entries of outbox_processed_idx in processed_at
    # order; a bucket that hits the cap reports the time of its last entry read, from which the
    # caller estimates the minute's total (cap x 60 s / time covered), so the chart costs at most
    # 60 x $1 index entries at any throughput.
    THROUGHPUT = """
SELECT m.start, t.events, t.last_at
FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                     date_trunc('minute', now()), interval '1 minute') AS m(start)
CROSS JOIN LATERAL (
    SELECT count(*) AS events, max(d.processed_at) AS last_at
    FROM (SELECT processed_at FROM {s}.outbox
          WHERE state = 'done' AND processed_at >= m.start
            AND processed_at < m.start + interval '1 minute'
          ORDER BY processed_at LIMIT $1) AS d
) AS t
ORDER BY m.start
"""

    async def throughput(self, conn: asyncpg.Connection, cap: int) -> list[Any]:
        """(start, events, last_at) per minute of the last hour, each counted up to ``cap``."""
        return list(await conn.fetch(self.THROUGHPUT, cap))

    # $1 rows. Dead events grouped by event type and dead handler, over the newest $1 dead events
    # (outbox_dead_idx, then the rows for their handler records): the newest error of each group,
    # its event, and how many distinct errors the group has. Events dead without a handler record
    # (their error is the event's own) form the group with handler NULL.
    DEAD_GROUPS = """
WITH recent AS (
    SELECT id, event_type, handlers, last_error FROM {s}.outbox
    WHERE state = 'dead' ORDER BY id DESC LIMIT $1
), units AS (
    SELECT r.id, r.event_type, h.key AS handler,
           COALESCE(h.value ->> 'error', r.last_error) AS error
    FROM recent AS r
    LEFT JOIN LATERAL (
        SELECT key, value FROM jsonb_each(r.handlers) WHERE value ->> 'state' = 'dead'
    ) AS h ON true
)
SELECT event_type, handler, count(*) AS events, max(id) AS newest_id,
       left((array_agg(error ORDER BY id DESC))[1], 1000) AS newest_error,
       count(DISTINCT error) AS distinct_errors
FROM units
GROUP BY event_type, handler
ORDER BY event_type, handler NULLS FIRST
"""

    async def dead_groups(self, conn: asyncpg.Connection, rows: int) -> list[Any]:
        """Dead (event type, handler) groups over the newest ``rows`` dead events."""
        return list(await conn.fetch(self.DEAD_GROUPS, rows))

    # Dead events per type, exact: an index-only count of outbox_dead_idx (event_type).
    DEAD_TOTALS = """
SELECT event_type, count(*) AS events FROM {s}.outbox WHERE state = 'dead' GROUP BY event_type
"""

    async def dead_totals(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Exact dead events per type."""
        return {r["event_type"]: r["events"] for r in await conn.fetch(self.DEAD_TOTALS)}

    # $1 event ids, $2 the reason kept as the event's error. Cancel pending events that no worker
    # holds: they become 'discarded' (never claimed again, kept for audit, deleted by
    # `prune --discarded`), with the reason as their last error. Running events are left alone
    # (their handlers are already under way); the ids changed are returned.
    CANCEL_PENDING = """
UPDATE {s}.outbox
SET state = 'discarded', last_error = $2
WHERE id = ANY($1::bigint[]) AND state = 'pending'
RETURNING id
"""

    async def cancel_pending(
        self, conn: asyncpg.Connection, ids: list[int], reason: str
    ) -> list[int]:
        """Pending events of ``ids`` -> discarded with ``reason``; return the ids changed."""
        return sorted(r[0] for r in await conn.fetch(self.CANCEL_PENDING, ids, reason))
