"""Statements of retry, discard and replay, and of events list / show / status --watch."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from ._base import Area
from .admin import AdminQueries

SelectionArgs = tuple[
    list[int] | None,
    list[int] | None,
    str | None,
    str | None,
    dt.datetime | None,
    dt.datetime | None,
    str | None,
    str | None,
]
"""The bound selection: id lows, id highs, event type, handler, since, until, queue,
ordering key (None = any). The handler is what each command makes of it (a dead handler for
retry and discard, the target for replay; cancel has none)."""


# The selection shared by retry, discard, replay and cancel, on the outbox alias o. Ids come
# as inclusive ranges (two arrays, lows and highs: `--ids 1..1000000` stays two numbers, not a
# million-element array); since/until bound created_at (since inclusive, until exclusive).
# An ordering key reads outbox_ordering_idx (0017) for pending, running and dead events.
def _selection(
    lows: str, highs: str, event_type: str, since: str, until: str, queue: str, key: str
) -> str:
    return f"""
    ({lows}::bigint[] IS NULL OR EXISTS (
        SELECT 1 FROM unnest({lows}::bigint[], {highs}::bigint[]) AS r(lo, hi)
        WHERE o.id BETWEEN r.lo AND r.hi))
    AND ({event_type}::text IS NULL OR o.event_type = {event_type}::text)
    AND ({since}::timestamptz IS NULL OR o.created_at >= {since}::timestamptz)
    AND ({until}::timestamptz IS NULL OR o.created_at < {until}::timestamptz)
    AND ({queue}::text IS NULL OR o.queue = {queue}::text)
    AND ({key}::text IS NULL OR o.ordering_key = {key}::text)"""


# Dead events of the selection; with a handler, only those where that handler is dead.
_DEAD = (
    "o.state = 'dead' AND"
    + _selection("$1", "$2", "$3", "$5", "$6", "$7", "$8")
    + "\n    AND ($4::text IS NULL OR o.handlers -> $4::text ->> 'state' = 'dead')"
)


# The next batch of dead events after id $9, at most $10, in id order. Walking by id (instead
# of "whatever is still dead") means an event that dies again while the command runs is not
# picked a second time.
_DEAD_BATCH = (
    "SELECT o.id FROM {s}.outbox AS o WHERE " + _DEAD + "\n    AND o.id > $9"
    " ORDER BY o.id LIMIT $10 FOR UPDATE"
)


# $1 event types (NULL = any), $2 states (NULL = any), $3 handler name (NULL = any),
# $4 handler state (NULL = any), $5 created at or after (timestamptz), $6 created at most this
# long ago (interval), $7 created before (timestamptz), $8 created longer ago than (interval),
# $9 idempotency key, $10 queues, $11 ids below this (keyset pagination), $12 rows.
# Never the payload: listings end up in terminals, logs and tickets.
#
# Every filter is `$n IS NULL OR ...`, run with a custom plan (see SteerQueries.list_events), where
# the NULL tests fold away. The state filter is spelled as one arm per state so that it folds
# into `state = 'dead' OR ...`, which the partial indexes' predicates can match (`state =
# ANY($2)` cannot). {order} is `id` for the usual plan: walk the primary key (or
# outbox_handlers_idx, or for dead events outbox_dead_list_idx) newest first and stop after
# $12 rows. For running events only it is `id + 0`, which hides the primary-key order from the
# planner: it then reads the partial index and sorts the few rows found. Measured on 1,000,000
# rows whose 1,000 dead ones are all older than the newest 900,000: `--state dead` walked the
# primary key through 900,000 rows in 311 ms (the planner assumes dead rows are spread evenly);
# through a per-type dead index and a sort it took 3 ms (35-55 ms with a cold cache), but 500 ms
# with 100,000 dead spread over the table, so dead events now have their own id-ordered index
# (0011) and take the usual plan. Pending events keep the key walk: a backlog can be large, and
# it is the newest events anyway.
_LIST_EVENTS = """
SELECT id, event_type, queue, state, attempt, created_at, run_at, processed_at,
       idempotency_key, leased_by, lease_expires_at, left(last_error, 500) AS last_error,
       (SELECT jsonb_object_agg(h.key, h.value ->> 'state')
        FROM jsonb_each(handlers) AS h)::text AS handler_states,
       now() AS db_now
FROM {s}.outbox
WHERE ($1::text[] IS NULL OR event_type = ANY($1::text[]))
  AND ($2::text[] IS NULL
       OR ('pending' = ANY($2::text[]) AND state = 'pending')
       OR ('running' = ANY($2::text[]) AND state = 'running')
       OR ('done' = ANY($2::text[]) AND state = 'done')
       OR ('dead' = ANY($2::text[]) AND state = 'dead')
       OR ('discarded' = ANY($2::text[]) AND state = 'discarded')
       OR ('cancelled' = ANY($2::text[]) AND state = 'cancelled'))
  AND (($3::text IS NULL AND $4::text IS NULL) OR (handlers IS NOT NULL AND (
        ($4::text IS NULL AND handlers ? $3::text)
        OR ($3::text IS NOT NULL AND handlers -> $3::text ->> 'state' = $4::text)
        OR ($3::text IS NULL AND EXISTS (
            SELECT FROM jsonb_each(handlers) AS h WHERE h.value ->> 'state' = $4::text)))))
  AND ($5::timestamptz IS NULL OR created_at >= $5::timestamptz)
  AND ($6::interval IS NULL OR created_at >= now() - $6::interval)
  AND ($7::timestamptz IS NULL OR created_at < $7::timestamptz)
  AND ($8::interval IS NULL OR created_at < now() - $8::interval)
  AND ($9::text IS NULL OR idempotency_key = $9::text)
  AND ($10::text[] IS NULL OR queue = ANY($10::text[]))
  AND ($11::bigint IS NULL OR id < $11::bigint)
ORDER BY {order} DESC
LIMIT $12
"""


class SteerQueries(Area):
    """Retry, discard, replay and the event listings' statements, for one schema."""

    # $1-$8 the selection (SelectionArgs; $4 a dead handler), NULL = any.
    COUNT_DEAD = "SELECT count(*) FROM {s}.outbox AS o WHERE " + _DEAD

    async def count_dead(self, conn: asyncpg.Connection, sel: SelectionArgs) -> int:
        """How many dead events match (with a handler: where that handler is dead)."""
        count: int = await conn.fetchval(self.COUNT_DEAD, *sel)
        return count

    # $1-$8 as COUNT_DEAD, $9 after id, $10 batch size. Dead handlers (only $4 when given) become
    # pending with a fresh attempt budget; handlers that succeeded stay done and do not run again.
    # With $4, a wildcard record (see _models.ANY_HANDLER) also keeps handlers that have no record
    # yet (registered since the event died) from running: only $4 runs.
    RETRY_BATCH = (
        "WITH picked AS ("
        + _DEAD_BATCH
        + """)
UPDATE {s}.outbox AS o
SET state = 'pending', run_at = now(), last_error = NULL,
    handlers = (
        SELECT jsonb_object_agg(h.key, CASE
            WHEN h.value ->> 'state' = 'dead' AND ($4::text IS NULL OR h.key = $4::text)
            THEN jsonb_build_object('state', 'pending', 'attempts', 0, 'seen', o.attempt,
                                    'updated_at', extract(epoch FROM now()))
            ELSE h.value END)
        FROM jsonb_each(o.handlers) AS h)
        || CASE WHEN $4::text IS NULL OR o.handlers ? '*' THEN '{{}}'::jsonb
           ELSE jsonb_build_object('*', jsonb_build_object(
               'state', 'done', 'attempts', 0, 'seen', o.attempt,
               'updated_at', extract(epoch FROM now()))) END
FROM picked
WHERE o.id = picked.id
RETURNING o.id
"""
    )

    async def retry_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Dead -> pending for the next batch after id ``after``; return their ids, sorted."""
        return sorted(r[0] for r in await conn.fetch(self.RETRY_BATCH, *sel, after, limit))

    # $1-$8 as COUNT_DEAD, $9 after id, $10 batch size. Dead handlers (only $4 when given) become
    # 'discarded' (kept, with their error, for audit); the event becomes 'discarded' when no dead
    # handler is left, else it stays dead for the others.
    DISCARD_BATCH = (
        "WITH picked AS ("
        + _DEAD_BATCH
        + """), marked AS (
    SELECT o.id, (
        SELECT jsonb_object_agg(h.key, CASE
            WHEN h.value ->> 'state' = 'dead' AND ($4::text IS NULL OR h.key = $4::text)
            THEN h.value || jsonb_build_object(
                'state', 'discarded', 'updated_at', extract(epoch FROM now()))
            ELSE h.value END)
        FROM jsonb_each(o.handlers) AS h) AS handlers
    FROM {s}.outbox AS o JOIN picked ON o.id = picked.id
)
UPDATE {s}.outbox AS o
SET handlers = m.handlers,
    state = CASE WHEN EXISTS (SELECT 1 FROM jsonb_each(m.handlers) AS h
                              WHERE h.value ->> 'state' = 'dead')
            THEN 'dead' ELSE 'discarded' END
FROM marked AS m
WHERE o.id = m.id
RETURNING o.id
"""
    )

    async def discard_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Discard the dead handlers of the next batch after id ``after``; return the ids."""
        return sorted(r[0] for r in await conn.fetch(self.DISCARD_BATCH, *sel, after, limit))

    # $1 filter (JSON text). The unfinished replay with this filter, if any, and the database
    # clock (the start time of a new replay).
    REPLAY_FIND = """
SELECT now() AS now, r.id, r.started_at, r.last_id, r.touched
FROM (SELECT 1) AS one
LEFT JOIN {s}.replays AS r ON r.filter = $1::jsonb AND r.finished_at IS NULL
"""

    async def replay_find(self, conn: asyncpg.Connection, filter_json: str) -> Any:
        """(now, id, started_at, last_id, touched); id NULL when no unfinished replay."""
        return await conn.fetchrow(self.REPLAY_FIND, filter_json)

    # $1 filter (JSON text), $2 started_at, $3 the id to start after (below the lowest selected).
    # Creates the replay unless one with this filter is unfinished (then the caller finds that one
    # with REPLAY_FIND and resumes it).
    REPLAY_START = """
INSERT INTO {s}.replays (filter, started_at, last_id) VALUES ($1::jsonb, $2, $3)
ON CONFLICT (filter) WHERE finished_at IS NULL DO NOTHING
"""

    async def replay_start(
        self, conn: asyncpg.Connection, filter_json: str, started_at: dt.datetime, after: int
    ) -> None:
        """Create the replay row unless an unfinished one has this filter."""
        await conn.execute(self.REPLAY_START, filter_json, started_at, after)

    # $1 id lows, $2 id highs, $3 event type, $4 since, $5 until, $6 queue, $7 ordering key,
    # $8 replay start, $9 after id.
    # Events of the selection per state: done ones (processed before the replay started) are
    # replayed, the others are reported as skipped.
    REPLAY_COUNT = (
        "SELECT o.state, count(*) AS events FROM {s}.outbox AS o WHERE "
        + _selection("$1", "$2", "$3", "$4", "$5", "$6", "$7")
        + """
    AND o.id > $9 AND (o.state <> 'done' OR o.processed_at < $8)
GROUP BY o.state
"""
    )

    async def replay_count(
        self,
        conn: asyncpg.Connection,
        sel: SelectionArgs,
        started_at: dt.datetime,
        after: int,
    ) -> dict[str, int]:
        """Events of the selection per state (done: processed before ``started_at``)."""
        lows, highs, event_type, _handler, since, until, queue, key = sel
        rows = await conn.fetch(
            self.REPLAY_COUNT, lows, highs, event_type, since, until, queue, key, started_at, after
        )
        return {r["state"]: r["events"] for r in rows}

    # $1-$8 the selection ($4 the handler, NULL = every handler), $9 replay id, $10 batch size.
    # One statement per batch, so the events, their ledger rows and the replay's progress commit
    # together: rerun after an interruption, the replay continues after last_id and never replays
    # a batch twice. The replay row is locked first, so two runs of one replay take turns.
    # To every handler: back to a first delivery. To one handler: a fresh pending record for it
    # and a done wildcard for the others (plan() then runs only it), attempt kept (seen = attempt).
    REPLAY_BATCH = (
        """
WITH run AS (
    SELECT id, started_at, last_id FROM {s}.replays
    WHERE id = $9 AND finished_at IS NULL
    FOR UPDATE
), picked AS (
    -- Scalar subqueries, not a join with run: only then is `id > last_id` an index condition
    -- (joined, the primary-key scan started at id 1 every batch: 310 ms per batch of 1000
    -- at id 200,000, measured; now each batch starts where the last one stopped).
    SELECT o.id FROM {s}.outbox AS o
    WHERE o.state = 'done' AND o.processed_at < (SELECT started_at FROM run)
      AND o.id > (SELECT last_id FROM run) AND"""
        + _selection("$1", "$2", "$3", "$5", "$6", "$7", "$8")
        + """
    ORDER BY o.id LIMIT $10
    FOR UPDATE OF o
), replayed AS (
    UPDATE {s}.outbox AS o
    SET state = 'pending', run_at = now(), processed_at = NULL, last_error = NULL,
        attempt = CASE WHEN $4::text IS NULL THEN 0 ELSE o.attempt END,
        handlers = CASE WHEN $4::text IS NULL THEN NULL
            ELSE COALESCE(o.handlers, '{{}}'::jsonb) || jsonb_build_object(
                '*', jsonb_build_object('state', 'done', 'attempts', 0, 'seen', o.attempt,
                                        'updated_at', extract(epoch FROM now())),
                $4::text, jsonb_build_object('state', 'pending', 'attempts', 0, 'seen', o.attempt,
                                             'updated_at', extract(epoch FROM now())))
            END
    FROM picked
    WHERE o.id = picked.id
    RETURNING o.id
), ledger AS (
    DELETE FROM {s}.effects AS e USING replayed
    WHERE e.event_id = replayed.id AND ($4::text IS NULL OR e.handler = $4::text)
), progress AS (
    UPDATE {s}.replays AS r
    SET last_id = COALESCE((SELECT max(id) FROM replayed), r.last_id),
        touched = r.touched + (SELECT count(*) FROM replayed),
        finished_at = CASE WHEN (SELECT count(*) FROM replayed) < $10 THEN now() END
    FROM run
    WHERE r.id = run.id
    RETURNING r.touched, r.finished_at IS NOT NULL AS finished
)
SELECT (SELECT count(*) FROM replayed) AS replayed, touched, finished FROM progress
"""
    )

    async def replay_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, replay_id: int, limit: int
    ) -> tuple[int, bool]:
        """Replay one batch; return (events replayed, whether the replay is finished)."""
        row = await conn.fetchrow(self.REPLAY_BATCH, *sel, replay_id, limit)
        if row is None:  # finished meanwhile (by another run of the same replay)
            return 0, True
        return row["replayed"], row["finished"]

    # -- inspect --------------------------------------------------------------------------------

    # The two plans of _LIST_EVENTS (see there).
    LIST_EVENTS = _LIST_EVENTS.replace("{order}", "id")
    LIST_EVENTS_BY_STATE = _LIST_EVENTS.replace("{order}", "id + 0")

    async def list_events(
        self,
        conn: asyncpg.Connection,
        types: Sequence[str] | None,
        states: Sequence[str] | None,
        handler: str | None,
        handler_state: str | None,
        times: tuple[
            dt.datetime | None, dt.timedelta | None, dt.datetime | None, dt.timedelta | None
        ],
        key: str | None,
        queues: Sequence[str] | None,
        before_id: int | None,
        limit: int,
    ) -> list[Any]:
        """Events matching the filters (None = any), newest first, without payloads.

        ``times``: created at or after, at most this long ago, before, longer ago than.
        """
        # A fresh prepared statement always gets a custom plan, in which the `$n IS NULL`
        # tests fold away and partial indexes can match; through the statement cache the
        # sixth call on one connection may switch to a generic plan that cannot use them.
        # Dead events are listed newest first by walking outbox_dead_list_idx (0011), which
        # the usual plan finds by itself; only running ones still need the sorted plan.
        by_state = (
            states is not None
            and set(states) <= {"running"}
            and handler is None
            and handler_state is None
        )
        sql = self.LIST_EVENTS_BY_STATE if by_state else self.LIST_EVENTS
        statement = await conn.prepare(sql)
        return list(
            await statement.fetch(
                types, states, handler, handler_state, *times, key, queues, before_id, limit
            )
        )

    # $1 event id. Everything about one event, payload included (only `events show` prints it),
    # and the handlers whose effects the `once` ledger recorded.
    GET_EVENT = """
SELECT o.id, o.event_type, o.queue, o.state, o.attempt, o.created_at, o.run_at,
       o.processed_at, o.idempotency_key, o.lease_token, o.leased_by, o.lease_expires_at,
       o.last_error, o.payload::text AS payload, o.handlers::text AS handlers,
       ARRAY(SELECT e.handler FROM {s}.effects AS e WHERE e.event_id = o.id
             ORDER BY e.handler) AS effects,
       now() AS db_now
FROM {s}.outbox AS o
WHERE o.id = $1
"""

    async def get_event(self, conn: asyncpg.Connection, event_id: int) -> Any:
        """One event's row, payload included, or None."""
        return await conn.fetchrow(self.GET_EVENT, event_id)

    # $1 window in seconds. One refresh of `status --watch`: ACTIVE_COUNTS, and the events done
    # within the window (outbox_processed_idx), never a count of every done row.
    LIVE_COUNTS = (
        AdminQueries.ACTIVE_COUNTS
        + """UNION ALL
SELECT event_type, 'done', count(*), NULL FROM {s}.outbox
WHERE state = 'done' AND processed_at > now() - make_interval(secs => $1)
GROUP BY event_type
"""
    )

    async def live_counts(self, conn: asyncpg.Connection, window: float) -> list[Any]:
        """Active counts per type and state, and events done in the last ``window`` s."""
        return list(await conn.fetch(self.LIVE_COUNTS, window))

    # Per (event type, handler, handler state) for events not yet done: only rows with records,
    # read through outbox_handlers_idx (the happy path writes none).
    LIVE_HANDLERS = """
SELECT o.event_type, h.key AS handler, h.value ->> 'state' AS state, count(*) AS events
FROM {s}.outbox AS o, jsonb_each(o.handlers) AS h
WHERE o.handlers IS NOT NULL AND o.state <> 'done'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

    async def live_handlers(self, conn: asyncpg.Connection) -> list[Any]:
        """Handler states of unfinished events, per event type and handler."""
        return list(await conn.fetch(self.LIVE_HANDLERS))
