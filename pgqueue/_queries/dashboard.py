"""Statements of the web dashboard's pages that the CLI has no equivalent of: the overview by
queue and type, the throughput chart (done per minute, and the created ids per minute that the
backlog line is worked back from), dead events grouped by handler.
Every other page and action calls the library functions the CLI calls.

Each statement reads a bounded number of index entries or rows, whatever the table's size
(`bin/bench --only dashboard` measures every page on 1,000,000 events with 100,000 dead).
"""

from __future__ import annotations

import datetime as dt
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

    # $1 minute starts, $2 an id at or below each one's answer (1 when unknown). For each minute
    # start, the first event id created at or after it; and, in a row with a NULL start, the next
    # id to be used. Ids rise with creation, so the events created in a minute are about the ids
    # between two boundaries (rolled-back inserts leave gaps, counted as created; a transaction
    # that commits long after it began lands late): the chart needs no index on created_at
    # (sql/0003 explains why there is none). Each boundary is a binary search over the primary
    # key, all at once, one probe of outbox_pkey per boundary and round. All 60 minutes of a
    # million ids: 20 rounds, 4,800 buffer hits, 12 ms of backend CPU (the overview's other
    # statements: about 37 ms); so the dashboard keeps the boundaries of past minutes
    # (Dashboard.created_ids) and asks only for new minutes, from the last known boundary on:
    # a refresh costs a few probes.
    CREATED_BOUNDS = """
WITH RECURSIVE top AS (
    SELECT COALESCE(max(id), 0) + 1 AS next_id FROM {s}.outbox
), search AS (
    SELECT m.at, $2::bigint AS lo, top.next_id AS hi, 0 AS round
    FROM unnest($1::timestamptz[]) AS m(at), top
    UNION ALL
    -- Invariant: the answer is the first existing id >= some id in [lo, hi]; a probe at the
    -- midpoint halves the range.
    SELECT s.at,
           CASE WHEN p.id < s.hi AND p.created_at < s.at THEN p.id + 1 ELSE s.lo END,
           CASE WHEN p.id IS NULL OR p.id >= s.hi OR p.created_at >= s.at
                THEN (s.lo + s.hi) / 2 ELSE s.hi END,
           s.round + 1
    FROM search AS s
    LEFT JOIN LATERAL (
        SELECT o.id, o.created_at FROM {s}.outbox AS o
        WHERE o.id >= (s.lo + s.hi) / 2 ORDER BY o.id LIMIT 1
    ) AS p ON true
    WHERE s.lo < s.hi AND s.round < 70
)
SELECT s.at AS start, s.hi AS first_id FROM search AS s WHERE s.lo >= s.hi
UNION ALL
SELECT NULL, next_id FROM top
"""

    async def created_bounds(
        self, conn: asyncpg.Connection, starts: list[dt.datetime], low: int
    ) -> tuple[dict[dt.datetime, int], int]:
        """The first id created at or after each of ``starts`` (each at least ``low``), and
        the next id to be used: see CREATED_BOUNDS."""
        found: dict[dt.datetime, int] = {}
        next_id = 1
        for row in await conn.fetch(self.CREATED_BOUNDS, starts, low):
            if row["start"] is None:
                next_id = row["first_id"]
            else:
                found[row["start"]] = row["first_id"]
        return found, next_id

    # $1 rows. Dead events grouped by event type and dead handler, over the newest $1 dead events
    # (outbox_final_type_idx, then the rows for their handler records): the newest error of each
    # group, its event, and how many distinct errors the group has. Events dead without a handler
    # record (their error is the event's own) form the group with handler NULL.
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

    # Dead events per type, exact: an index-only count of outbox_final_type_idx
    # (state, event_type; 0020).
    DEAD_TOTALS = """
SELECT event_type, count(*) AS events FROM {s}.outbox WHERE state = 'dead' GROUP BY event_type
"""

    async def dead_totals(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Exact dead events per type."""
        return {r["event_type"]: r["events"] for r in await conn.fetch(self.DEAD_TOTALS)}
