"""Every runtime SQL statement (DML), and one small typed function per statement.

The SQL text is built once per schema (the only identifier, validated and quoted) and then
stays fixed, so asyncpg's statement cache prepares each statement once per connection.
Values are always bound parameters.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg

from ._models import PRIORITY_MAX, PRIORITY_MIN
from ._settings import quote_ident

# -- producer ---------------------------------------------------------------------------------

# $1 event_type, $2 payload (JSON text), $3 run_at (NULL = now), $4 idempotency key, $5 queue,
# $6 priority
INSERT_ONE = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority)
VALUES ($1, $2::jsonb, COALESCE($3::timestamptz, now()), $4, $5, $6)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# $1 idempotency key
ID_BY_KEY = "SELECT id FROM {s}.outbox WHERE idempotency_key = $1"

# $1 idempotency keys
IDS_BY_KEYS = "SELECT idempotency_key, id FROM {s}.outbox WHERE idempotency_key = ANY($1::text[])"

# $1 event types, $2 payloads (JSON text), $3 run_at (NULL = now), $4 keys, $5 queues,
# $6 priorities.
# One statement per chunk: unnest is ~15x faster than row-at-a-time inserts, and the
# statement-level trigger sends one NOTIFY for the whole chunk.
INSERT_MANY = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority)
SELECT t, p::jsonb, COALESCE(r, now()), k, q, pr
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::smallint[])
     WITH ORDINALITY AS i(t, p, r, k, q, pr, n)
ORDER BY n
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, idempotency_key
"""

# $1 event types, $2 payloads (JSON text). INSERT_MANY for chunks with every other column
# defaulted (priority 0 included): no ordinality, no conflict arbiter, two arrays instead of five.
INSERT_PLAIN = """
INSERT INTO {s}.outbox (event_type, payload)
SELECT t, p::jsonb FROM unnest($1::text[], $2::text[]) AS i(t, p)
RETURNING id
"""

# $1 event id, $2 handler name
RECORD_EFFECT = """
INSERT INTO {s}.effects (event_id, handler) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING true
"""

# -- worker -----------------------------------------------------------------------------------

# Priorities run from PRIORITY_MAX (first) down to PRIORITY_MIN; the constraint
# outbox_priority_range (sql/0004_schedule.sql) holds them there. A fixed, small range lets the
# claim probe each level directly: `priority = p AND run_at BETWEEN floor AND now()` is then one
# bounded range of outbox_ready_idx per level. A loose index scan over the priorities present
# (the first version) had to land at each level's oldest entry, which is where the claimed
# rows' entries pile up until VACUUM (see _floor.py), so every claim walked them again.
PRIORITY_LEVELS = f"generate_series({PRIORITY_MAX}, {PRIORITY_MIN}, -1) AS p(priority)"

# $1 queue, $2 event types this worker handles, $3 batch size, $4 lease token, $5 worker id,
# $6 lease seconds, $7 the lowest run_at to read (epoch seconds; -Infinity = all; see _floor.py).
# One statement claims a batch of ready events, the highest priority first, then by (run_at,
# id); it skips rows another worker has locked, and the UPDATE counts the attempt at claim time
# (so a handler that kills its worker still uses up attempts). now() is the database clock,
# returned for the worker's retry arithmetic.
#
# Shape: `id = ANY(ARRAY(subquery))` makes the pick an InitPlan run once, and the UPDATE an
# index scan on the primary key. The first version joined a CTE instead; the planner then
# hashed the whole table (a seq scan: 10 of 15 ms for 500 rows among 50,000).
#
# Priorities (sql/0004_schedule.sql): the pick goes through the levels, highest first, and
# per level reads outbox_ready_idx from the floor up to now(): `priority = p` makes both run_at
# bounds limits of the index range, so future-dated events (delayed, or durable retries) are
# never read, whatever their priority, and a future high-priority event holds back nobody.
# A plain `ORDER BY priority DESC, run_at, id` over the same index had to step over every
# future entry of a queue whenever the batch did not fill (100,000 events due tomorrow, 200
# ready: 60 ms against 5.6 ms with 0001's (queue, run_at, id) index). The nested loop pulls
# level by level and stops at LIMIT $3, so no row beyond the batch is locked; an empty level
# costs one index descent.
CLAIM = (
    """
UPDATE {s}.outbox AS o
SET state = 'running', attempt = o.attempt + 1, lease_token = $4, leased_by = $5,
    lease_expires_at = now() + make_interval(secs => $6)
WHERE o.id = ANY(ARRAY(
    SELECT c.id FROM """
    + PRIORITY_LEVELS
    + """ CROSS JOIN LATERAL (
        SELECT id FROM {s}.outbox
        WHERE state = 'pending' AND queue = $1 AND priority = p.priority
          AND run_at <= now() AND run_at >= to_timestamp($7::float8)
          AND event_type = ANY($2::text[])
        ORDER BY run_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) AS c
    LIMIT $3
))
RETURNING o.id, o.event_type, o.payload, o.attempt, o.handlers, o.created_at,
          extract(epoch FROM now())::float8 AS db_now,
          extract(epoch FROM now() - o.created_at)::float8 AS age, o.headers
"""
)

# $1 ids, $2 their (one) lease token. Every handler succeeded and the event had no per-handler
# record: the happy path costs this one statement per claimed batch and no per-handler write.
# `id = ANY($1)` keeps a primary-key index scan even under a generic plan (an unnest join
# turned into a 35 ms plan after the fifth execution, measured on 500 rows).
COMPLETE_DONE = """
UPDATE {s}.outbox
SET state = 'done', processed_at = now(), lease_token = NULL, leased_by = NULL,
    lease_expires_at = NULL, last_error = NULL
WHERE id = ANY($1::bigint[]) AND lease_token = $2 AND state = 'running'
RETURNING id
"""

# $1 ids, $2 lease tokens, $3 new states, $4 delays (seconds, for pending), $5 attempt refunds
# (1 for work handed back at shutdown), $6 handler records (JSON text), $7 last errors.
# Fenced by the lease token: a worker that lost its lease changes nothing (checked by the caller
# through the returned ids).
COMPLETE = """
UPDATE {s}.outbox AS o
SET state = u.state,
    processed_at = CASE WHEN u.state = 'done' THEN now() END,
    run_at = CASE WHEN u.state = 'pending' THEN now() + make_interval(secs => u.delay)
             ELSE o.run_at END,
    attempt = o.attempt - u.refund,
    handlers = u.handlers::jsonb,
    last_error = u.error,
    lease_token = NULL, leased_by = NULL, lease_expires_at = NULL
FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[], $6::text[],
            $7::text[]) AS u(id, token, state, delay, refund, handlers, error)
WHERE o.id = u.id AND o.lease_token = u.token AND o.state = 'running'
RETURNING o.id
"""

# $1 ids, $2 lease tokens, $3 lease seconds. Returns the ids still held (renewed, or row-locked
# by another session this round). SKIP LOCKED: one row locked by someone else (an operator's
# open UPDATE) must not hold up the renewal of every other lease of this worker.
HEARTBEAT = """
WITH mine AS (
    SELECT o.id FROM {s}.outbox AS o
    JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token) ON o.id = u.id
    WHERE o.lease_token = u.token AND o.state = 'running'
), lockable AS (
    SELECT o.id FROM {s}.outbox AS o
    JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token) ON o.id = u.id
    WHERE o.lease_token = u.token AND o.state = 'running'
    FOR UPDATE OF o SKIP LOCKED
), renewed AS (
    UPDATE {s}.outbox AS o
    SET lease_expires_at = now() + make_interval(secs => $3)
    FROM lockable WHERE o.id = lockable.id
    RETURNING o.id
)
SELECT id FROM mine
"""

# $1 max rows. Returns leases that expired (their worker died or froze) to pending. The attempt
# stays counted; SKIP LOCKED lets several workers rescue at once without waiting.
RESCUE = """
WITH expired AS (
    SELECT id, leased_by FROM {s}.outbox
    WHERE state = 'running' AND lease_expires_at < now()
      AND lease_token <> ALL($2::uuid[])  -- never the leases the rescuing worker holds
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.outbox AS o
SET state = 'pending', run_at = now(), lease_token = NULL, leased_by = NULL,
    lease_expires_at = NULL,
    last_error = 'lease expired: worker ' || COALESCE(e.leased_by, '?') || ' stopped renewing it'
FROM expired AS e
WHERE o.id = e.id
RETURNING o.id, o.event_type, e.leased_by
"""

# $1 queue, $2 event types. Seconds until the next pending event of these types falls due
# (NULL when none), so an idle worker wakes exactly when a delayed retry is due. Only future
# rows: a row due now that the claim did not take is locked by someone else (or below the
# claim's floor, see _floor.py), and answering "due now" for it made an idle worker claim in
# a tight loop. Per priority level the first future row: `run_at > now()` starts each index
# range past the claimed rows' entries.
NEXT_DUE = (
    """
SELECT extract(epoch FROM min(d.run_at) - now())::float8
FROM """
    + PRIORITY_LEVELS
    + """ CROSS JOIN LATERAL (
    SELECT o.run_at FROM {s}.outbox AS o
    WHERE o.state = 'pending' AND o.queue = $1 AND o.priority = p.priority
      AND o.run_at > now() AND o.event_type = ANY($2::text[])
    ORDER BY o.run_at, o.id
    LIMIT 1
) AS d
"""
)

# -- admin ------------------------------------------------------------------------------------

# Exact counts of the active states, each arm read through its partial index
# (outbox_ready_idx, outbox_lease_idx, outbox_dead_idx, outbox_discarded_idx): these sets stay
# small in a healthy queue, so this costs the same with 1,000 or 100,000,000 done events kept.
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
"""

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

# The planner's row count of the outbox (kept by autovacuum / ANALYZE; -1 before the first).
OUTBOX_ROWS_ESTIMATE = """
SELECT reltuples::float8 FROM pg_class WHERE oid = '{s}.outbox'::regclass
"""

DEAD_HANDLERS = """
SELECT o.event_type, h.key AS handler, count(*) AS events
FROM {s}.outbox AS o, jsonb_each(o.handlers) AS h
WHERE o.state = 'dead' AND h.value ->> 'state' = 'dead'
GROUP BY o.event_type, h.key
ORDER BY o.event_type, h.key
"""

# $1 age (interval), $2 include dead events, $3 include discarded events. What prune would
# delete.
PRUNE_COUNT = """
SELECT count(*) FROM {s}.outbox
WHERE (state = 'done' AND processed_at < now() - $1::interval)
   OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
   OR ($3::boolean AND state = 'discarded' AND created_at < now() - $1::interval)
"""

# $1 age (interval), $2 include dead events, $3 include discarded events, $4 batch size. One
# batch, in its own transaction: short transactions keep locks and the xmin horizon short on a
# busy queue. The effects ledger rows of the deleted events go with them.
PRUNE_BATCH = """
WITH gone AS (
    DELETE FROM {s}.outbox
    WHERE id IN (
        SELECT id FROM {s}.outbox
        WHERE (state = 'done' AND processed_at < now() - $1::interval)
           OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
           OR ($3::boolean AND state = 'discarded' AND created_at < now() - $1::interval)
        LIMIT $4
        FOR UPDATE SKIP LOCKED)
    RETURNING id
), ledger AS (
    DELETE FROM {s}.effects WHERE event_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"""


# -- testing (pgqueue.testing) ------------------------------------------------------------------

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

# $1 name prefix. The scratch databases of one test session (pgqueue.testing), to drop them.
SCRATCH_DATABASES = "SELECT datname FROM pg_database WHERE starts_with(datname, $1)"


async def scratch_databases(conn: asyncpg.Connection, prefix: str) -> list[str]:
    """Names of the databases starting with ``prefix`` (no schema involved)."""
    return [row[0] for row in await conn.fetch(SCRATCH_DATABASES, prefix)]


# -- steer: retry / discard / replay ---------------------------------------------------------


# The selection shared by retry, discard and replay, on the outbox alias o. Ids come as
# inclusive ranges (two arrays, lows and highs: `--ids 1..1000000` stays two numbers, not a
# million-element array); since/until bound created_at (since inclusive, until exclusive).
def _selection(lows: str, highs: str, event_type: str, since: str, until: str) -> str:
    return f"""
    ({lows}::bigint[] IS NULL OR EXISTS (
        SELECT 1 FROM unnest({lows}::bigint[], {highs}::bigint[]) AS r(lo, hi)
        WHERE o.id BETWEEN r.lo AND r.hi))
    AND ({event_type}::text IS NULL OR o.event_type = {event_type}::text)
    AND ({since}::timestamptz IS NULL OR o.created_at >= {since}::timestamptz)
    AND ({until}::timestamptz IS NULL OR o.created_at < {until}::timestamptz)"""


# Dead events of the selection; with a handler, only those where that handler is dead.
_DEAD = (
    "o.state = 'dead' AND"
    + _selection("$1", "$2", "$3", "$5", "$6")
    + "\n    AND ($4::text IS NULL OR o.handlers -> $4::text ->> 'state' = 'dead')"
)

# $1 id lows, $2 id highs, $3 event type, $4 dead handler, $5 since, $6 until (NULL = any).
COUNT_DEAD = "SELECT count(*) FROM {s}.outbox AS o WHERE " + _DEAD

# The next batch of dead events after id $7, at most $8, in id order. Walking by id (instead
# of "whatever is still dead") means an event that dies again while the command runs is not
# picked a second time.
_DEAD_BATCH = (
    "SELECT o.id FROM {s}.outbox AS o WHERE " + _DEAD + "\n    AND o.id > $7"
    " ORDER BY o.id LIMIT $8 FOR UPDATE"
)

# $1-$6 as COUNT_DEAD, $7 after id, $8 batch size. Dead handlers (only $4 when given) become
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

# $1-$6 as COUNT_DEAD, $7 after id, $8 batch size. Dead handlers (only $4 when given) become
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

# The database clock: relative --since / --until are resolved on it, and ages shown next to
# rows read in an earlier statement are measured on it, like every time in pgqueue.
DB_NOW = "SELECT now()"

# $1 filter (JSON text). The unfinished replay with this filter, if any, and the database
# clock (the start time of a new replay).
REPLAY_FIND = """
SELECT now() AS now, r.id, r.started_at, r.last_id, r.touched
FROM (SELECT 1) AS one
LEFT JOIN {s}.replays AS r ON r.filter = $1::jsonb AND r.finished_at IS NULL
"""

# $1 filter (JSON text), $2 started_at, $3 the id to start after (below the lowest selected).
# Creates the replay unless one with this filter is unfinished (then the caller finds that one
# with REPLAY_FIND and resumes it).
REPLAY_START = """
INSERT INTO {s}.replays (filter, started_at, last_id) VALUES ($1::jsonb, $2, $3)
ON CONFLICT (filter) WHERE finished_at IS NULL DO NOTHING
"""

# $1 id lows, $2 id highs, $3 event type, $4 since, $5 until, $6 replay start, $7 after id.
# Events of the selection per state: done ones (processed before the replay started) are
# replayed, the others are reported as skipped.
REPLAY_COUNT = (
    "SELECT o.state, count(*) AS events FROM {s}.outbox AS o WHERE "
    + _selection("$1", "$2", "$3", "$4", "$5")
    + """
    AND o.id > $7 AND (o.state <> 'done' OR o.processed_at < $6)
GROUP BY o.state
"""
)

# $1 id lows, $2 id highs, $3 event type, $4 handler (NULL = every handler), $5 since,
# $6 until, $7 replay id, $8 batch size.
# One statement per batch, so the events, their ledger rows and the replay's progress commit
# together: rerun after an interruption, the replay continues after last_id and never replays
# a batch twice. The replay row is locked first, so two runs of one replay take turns.
# To every handler: back to a first delivery. To one handler: a fresh pending record for it
# and a done wildcard for the others (plan() then runs only it), attempt kept (seen = attempt).
REPLAY_BATCH = (
    """
WITH run AS (
    SELECT id, started_at, last_id FROM {s}.replays
    WHERE id = $7 AND finished_at IS NULL
    FOR UPDATE
), picked AS (
    -- Scalar subqueries, not a join with run: only then is `id > last_id` an index condition
    -- (joined, the primary-key scan started at id 1 every batch: 310 ms per batch of 1000
    -- at id 200,000, measured; now each batch starts where the last one stopped).
    SELECT o.id FROM {s}.outbox AS o
    WHERE o.state = 'done' AND o.processed_at < (SELECT started_at FROM run)
      AND o.id > (SELECT last_id FROM run) AND"""
    + _selection("$1", "$2", "$3", "$5", "$6")
    + """
    ORDER BY o.id LIMIT $8
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
        finished_at = CASE WHEN (SELECT count(*) FROM replayed) < $8 THEN now() END
    FROM run
    WHERE r.id = run.id
    RETURNING r.touched, r.finished_at IS NOT NULL AS finished
)
SELECT (SELECT count(*) FROM replayed) AS replayed, touched, finished FROM progress
"""
)


# -- inspect ----------------------------------------------------------------------------------

# $1 event types (NULL = any), $2 states (NULL = any), $3 handler name (NULL = any),
# $4 handler state (NULL = any), $5 created at or after (timestamptz), $6 created at most this
# long ago (interval), $7 created before (timestamptz), $8 created longer ago than (interval),
# $9 idempotency key, $10 queues, $11 ids below this (keyset pagination), $12 rows.
# Never the payload: listings end up in terminals, logs and tickets.
#
# Every filter is `$n IS NULL OR ...`, run with a custom plan (see Queries.event_rows), where
# the NULL tests fold away. The state filter is spelled as one arm per state so that it folds
# into `state = 'dead' OR ...`, which the partial indexes' predicates can match (`state =
# ANY($2)` cannot). {order} is `id` for the usual plan: walk the primary key (or
# outbox_handlers_idx) newest first and stop after $12 rows. For running and dead events only
# it is `id + 0`, which hides the primary-key order from the planner: it then reads the
# partial index and sorts the few rows found. Measured on 1,000,000 rows whose 1,000 dead ones
# are all older than the newest 900,000: `--state dead` walked the primary key through 900,000
# rows in 311 ms (the planner assumes dead rows are spread evenly); through outbox_dead_idx it
# takes 3 ms (35-55 ms with a cold cache: 1,000 rows on 1,000 pages). Pending events keep the
# key walk: a backlog can be large, and it is the newest events anyway.
LIST_EVENTS = """
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
       OR ('dead' = ANY($2::text[]) AND state = 'dead'))
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

# $1 window in seconds. One refresh of `status --watch`: ACTIVE_COUNTS, and the events done
# within the window (outbox_processed_idx), never a count of every done row.
LIVE_COUNTS = (
    ACTIVE_COUNTS
    + """UNION ALL
SELECT event_type, 'done', count(*), NULL FROM {s}.outbox
WHERE state = 'done' AND processed_at > now() - make_interval(secs => $1)
GROUP BY event_type
"""
)

# Per (event type, handler, handler state) for events not yet done: only rows with records,
# read through outbox_handlers_idx (the happy path writes none).
LIVE_HANDLERS = """
SELECT o.event_type, h.key AS handler, h.value ->> 'state' AS state, count(*) AS events
FROM {s}.outbox AS o, jsonb_each(o.handlers) AS h
WHERE o.handlers IS NOT NULL AND o.state <> 'done'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


# -- observe ----------------------------------------------------------------------------------

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

# $1 limit. Dead events per type, from outbox_dead_idx; at most $1 rows are read.
DEAD_COUNTS = """
SELECT event_type, count(*) AS events
FROM (SELECT event_type FROM {s}.outbox WHERE state = 'dead' LIMIT $1) AS d
GROUP BY event_type
"""

# $1 event_type, $2 payload (JSON text), $3 run_at (NULL = now), $4 key, $5 queue, $6 priority,
# $7 headers (JSON text: the W3C trace context of the producer). INSERT_ONE plus headers: used
# only when a trace context is active, so untraced producers keep the statement they had.
INSERT_ONE_HEADERS = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority, headers)
VALUES ($1, $2::jsonb, COALESCE($3::timestamptz, now()), $4, $5, $6, $7::jsonb)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# $1-$6 as INSERT_MANY, $7 headers (JSON text) for every row of the chunk (one enqueue_many
# call runs in one trace context).
INSERT_MANY_HEADERS = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority, headers)
SELECT t, p::jsonb, COALESCE(r, now()), k, q, pr, $7::jsonb
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::smallint[])
     WITH ORDINALITY AS i(t, p, r, k, q, pr, n)
ORDER BY n
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, idempotency_key
"""

# -- limits -----------------------------------------------------------------------------------
# Per-handler concurrency slots (sql/0006_limits.sql, pgqueue/_limits.py). The slot token is
# one per worker run; every write on a slot is fenced by it.

# $1 handler names (sorted: two workers starting at once lock the rows in the same order),
# $2 their concurrency in the registry. The operator's `override` is never written here, and an
# unchanged value writes nothing (the trigger that resizes the slots does not fire).
LIMITS_WRITE = """
INSERT INTO {s}.handler_limits AS l (handler, concurrency)
SELECT h, c FROM unnest($1::text[], $2::int[]) AS i(h, c)
ON CONFLICT (handler) DO UPDATE SET concurrency = EXCLUDED.concurrency, updated_at = now()
WHERE l.concurrency IS DISTINCT FROM EXCLUDED.concurrency
"""

# $1 handler names
LIMITS_READ = """
SELECT handler, concurrency, override FROM {s}.handler_limits
WHERE handler = ANY($1::text[]) ORDER BY handler
"""

# $1 handler names, $2 slots wanted per handler, $3 slot token, $4 worker id, $5 lease seconds.
# One statement takes slots of several handlers: per handler, a LATERAL pick of up to the wanted
# number of free (or expired) slots, SKIP LOCKED so that workers never wait on each other (a
# slot another worker is taking right now counts as taken). Returns (handler, slot) taken.
SLOTS_ACQUIRE = """
UPDATE {s}.handler_slots AS s
SET lease_token = $3, leased_by = $4, lease_expires_at = now() + make_interval(secs => $5)
FROM unnest($1::text[], $2::int[]) AS w(handler, wanted)
CROSS JOIN LATERAL (
    SELECT f.handler, f.slot FROM {s}.handler_slots AS f
    WHERE f.handler = w.handler AND (f.lease_token IS NULL OR f.lease_expires_at < now())
    ORDER BY f.slot
    LIMIT w.wanted
    FOR UPDATE SKIP LOCKED
) AS p
WHERE s.handler = p.handler AND s.slot = p.slot
RETURNING s.handler, s.slot
"""

# $1 handler names, $2 slots, $3 slot token
SLOTS_RELEASE = """
UPDATE {s}.handler_slots AS s
SET lease_token = NULL, leased_by = NULL, lease_expires_at = NULL
FROM unnest($1::text[], $2::int[]) AS r(handler, slot)
WHERE s.handler = r.handler AND s.slot = r.slot AND s.lease_token = $3
"""

# $1 handler names, $2 slots, $3 slot token, $4 lease seconds. Only the slots the worker knows
# it holds: a slot taken by a statement whose answer was lost is left to expire.
SLOTS_RENEW = """
UPDATE {s}.handler_slots AS s
SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($1::text[], $2::int[]) AS r(handler, slot)
WHERE s.handler = r.handler AND s.slot = r.slot AND s.lease_token = $3
"""

# $1 slot token. At worker exit: everything it still holds.
SLOTS_RELEASE_ALL = """
UPDATE {s}.handler_slots
SET lease_token = NULL, leased_by = NULL, lease_expires_at = NULL
WHERE lease_token = $1
"""


# For `pgqueue limits`: every limit with the slots held now (a slot whose lease expired is free).
LIMITS_LIST = """
SELECT l.handler, l.concurrency, l.override,
       (SELECT count(*) FROM {s}.handler_slots AS s
        WHERE s.handler = l.handler AND s.lease_expires_at > now())::int AS running
FROM {s}.handler_limits AS l
ORDER BY l.handler
"""

# $1 handler, $2 override (NULL: back to the registry's value). The trigger resizes the slots.
LIMIT_OVERRIDE = """
UPDATE {s}.handler_limits SET override = $2, updated_at = now()
WHERE handler = $1
RETURNING handler
"""


@lru_cache(maxsize=32)
def queries_for(schema: str) -> Queries:
    """The statements for ``schema`` (immutable, so caching them is safe)."""
    return Queries(schema)


# lows, highs, event type, handler, since, until: the parameters $1-$6 of the steer statements.
SelectionArgs = tuple[
    list[int] | None,
    list[int] | None,
    str | None,
    str | None,
    dt.datetime | None,
    dt.datetime | None,
]


@dataclass(frozen=True)
class ClaimedRow:
    """A row returned by the claim statement."""

    id: int
    event_type: str
    payload: str
    attempt: int
    handlers: str | None
    created_at: dt.datetime
    db_now: float
    age: float
    headers: str | None = None  # JSON text: the producer's trace context, if any


class Queries:
    """The statements above, with the schema filled in, and a method per statement."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.insert_one = INSERT_ONE.format(s=s)
        self.id_by_key = ID_BY_KEY.format(s=s)
        self.ids_by_keys = IDS_BY_KEYS.format(s=s)
        self.insert_many = INSERT_MANY.format(s=s)
        self.insert_plain = INSERT_PLAIN.format(s=s)
        self.record_effect = RECORD_EFFECT.format(s=s)
        self.claim = CLAIM.format(s=s)
        self.complete_done = COMPLETE_DONE.format(s=s)
        self.complete = COMPLETE.format(s=s)
        self.heartbeat = HEARTBEAT.format(s=s)
        self.rescue = RESCUE.format(s=s)
        self.next_due = NEXT_DUE.format(s=s)
        self.active_counts = ACTIVE_COUNTS.format(s=s)
        self.done_counts = DONE_COUNTS.format(s=s)
        self.done_counts_sampled = DONE_COUNTS_SAMPLED.format(s=s)
        self.outbox_rows_estimate = OUTBOX_ROWS_ESTIMATE.format(s=s)
        self.dead_handlers = DEAD_HANDLERS.format(s=s)
        self.prune_count = PRUNE_COUNT.format(s=s)
        self.prune_batch = PRUNE_BATCH.format(s=s)
        self.test_events = TEST_EVENTS.format(s=s)
        self.test_advance = TEST_ADVANCE.format(s=s)
        self.db_now = DB_NOW
        self.count_dead = COUNT_DEAD.format(s=s)
        self.retry_batch = RETRY_BATCH.format(s=s)
        self.discard_batch = DISCARD_BATCH.format(s=s)
        self.replay_find = REPLAY_FIND.format(s=s)
        self.replay_start = REPLAY_START.format(s=s)
        self.replay_count = REPLAY_COUNT.format(s=s)
        self.replay_batch = REPLAY_BATCH.format(s=s)
        self.list_events = LIST_EVENTS.format(s=s, order="id")
        self.list_events_by_state = LIST_EVENTS.format(s=s, order="id + 0")
        self.get_event = GET_EVENT.format(s=s)
        self.live_counts = LIVE_COUNTS.format(s=s)
        self.live_handlers = LIVE_HANDLERS.format(s=s)
        self.depths = QUEUE_DEPTHS.format(s=s)
        self.dead_by_type = DEAD_COUNTS.format(s=s)
        self.insert_one_headers = INSERT_ONE_HEADERS.format(s=s)
        self.insert_many_headers = INSERT_MANY_HEADERS.format(s=s)
        self.channel = f"{schema}.outbox"
        # -- limits
        self.limits_write = LIMITS_WRITE.format(s=s)
        self.limits_read = LIMITS_READ.format(s=s)
        self.slots_acquire = SLOTS_ACQUIRE.format(s=s)
        self.slots_release = SLOTS_RELEASE.format(s=s)
        self.slots_renew = SLOTS_RENEW.format(s=s)
        self.slots_release_all = SLOTS_RELEASE_ALL.format(s=s)
        self.limits_list = LIMITS_LIST.format(s=s)
        self.limit_override = LIMIT_OVERRIDE.format(s=s)

    async def insert_event(
        self,
        conn: asyncpg.Connection,
        event_type: str,
        payload_json: str,
        run_at: dt.datetime | None,
        key: str | None,
        queue: str,
        priority: int = 0,
        headers: str | None = None,
    ) -> int:
        """Insert one event; with a key already used, return the existing event's id.

        ``headers`` (JSON text) is stored with the event; without it the statement has no
        headers column at all.
        """
        args = (event_type, payload_json, run_at, key, queue, priority)
        new_id: int | None = await (
            conn.fetchval(self.insert_one, *args)
            if headers is None
            else conn.fetchval(self.insert_one_headers, *args, headers)
        )
        if new_id is None:
            new_id = await conn.fetchval(self.id_by_key, key)
            if new_id is None:  # the conflicting row was deleted between the two statements
                raise RuntimeError(f"idempotency key {key!r} conflicted but no row holds it")
        return new_id

    async def insert_events(
        self,
        conn: asyncpg.Connection,
        types: Sequence[str],
        payloads: Sequence[str],
        run_ats: Sequence[dt.datetime | None],
        keys: Sequence[str | None],
        queues: Sequence[str],
        priorities: Sequence[int],
        headers: str | None = None,
    ) -> list[int]:
        """Insert many events in one statement; return ids in input order.

        ``headers`` (JSON text), when given, is stored with every event of the chunk.
        """
        args = (types, payloads, run_ats, keys, queues, priorities)
        rows = await (
            conn.fetch(self.insert_many, *args)
            if headers is None
            else conn.fetch(self.insert_many_headers, *args, headers)
        )
        # Identity values are assigned in insertion order, which follows ORDER BY n, so the
        # inserted rows sorted by id line up with the input rows that were not skipped.
        rows.sort(key=lambda r: r[0])
        inserted = iter(r[0] for r in rows)
        fresh_keys = {r[1] for r in rows if r[1] is not None}
        existing: dict[str, int] = {}
        skipped = [k for k in keys if k is not None]
        if len(rows) < len(types) and skipped:
            existing = {r[0]: r[1] for r in await conn.fetch(self.ids_by_keys, skipped)}
        ids: list[int] = []
        for key in keys:
            if key is None or key in fresh_keys:
                ids.append(next(inserted))
                if key is not None:
                    fresh_keys.discard(key)
            else:
                ids.append(existing[key])
        return ids

    async def insert_plain_events(
        self, conn: asyncpg.Connection, types: Sequence[str], payloads: Sequence[str]
    ) -> list[int]:
        """Insert events with default run_at, queue and no key; return ids in input order.

        Identity values are assigned in insertion order, which follows the array order.
        """
        return sorted(r[0] for r in await conn.fetch(self.insert_plain, types, payloads))

    async def claim_batch(
        self,
        conn: asyncpg.Connection,
        queue: str,
        event_types: Sequence[str],
        limit: int,
        token: uuid.UUID,
        worker_id: str,
        lease_seconds: float,
        floor: float = -math.inf,
    ) -> list[ClaimedRow]:
        """Claim up to ``limit`` ready events with ``run_at >= floor`` under ``token``."""
        rows = await conn.fetch(
            self.claim, queue, event_types, limit, token, worker_id, lease_seconds, floor
        )
        return [ClaimedRow(*r) for r in rows]

    async def complete_done_batch(
        self, conn: asyncpg.Connection, ids: Sequence[int], token: uuid.UUID
    ) -> list[int]:
        """Mark events of one claim done (fenced by its token); return the ids updated."""
        return [r[0] for r in await conn.fetch(self.complete_done, ids, token)]

    async def complete_batch(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        tokens: Sequence[uuid.UUID],
        states: Sequence[str],
        delays: Sequence[float],
        refunds: Sequence[int],
        handlers: Sequence[str | None],
        errors: Sequence[str | None],
    ) -> list[int]:
        """Record any outcome (fenced); return the ids actually updated."""
        rows = await conn.fetch(
            self.complete, ids, tokens, states, delays, refunds, handlers, errors
        )
        return [r[0] for r in rows]

    async def extend_leases(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        tokens: Sequence[uuid.UUID],
        lease_seconds: float,
    ) -> list[int]:
        """Renew the leases still held; return their ids (renewed or locked by another
        session this round: still ours either way)."""
        return [r[0] for r in await conn.fetch(self.heartbeat, ids, tokens, lease_seconds)]

    async def rescue_expired(
        self, conn: asyncpg.Connection, held: Sequence[uuid.UUID] = (), limit: int = 1000
    ) -> list[Any]:
        """Return expired leases to pending, except the ``held`` lease tokens (the caller's:
        it is alive, it runs them); return (id, event_type, leased_by) rows."""
        return list(await conn.fetch(self.rescue, limit, list(held)))

    async def seconds_until_due(
        self, conn: asyncpg.Connection, queue: str, event_types: Sequence[str]
    ) -> float | None:
        """Seconds until the next pending event falls due (None: nothing in the future)."""
        value: float | None = await conn.fetchval(self.next_due, queue, event_types)
        return value

    async def record_effect_once(
        self, conn: asyncpg.Connection, event_id: int, handler: str
    ) -> bool:
        """Record (event, handler) in the effects ledger; False when it was already there."""
        return bool(await conn.fetchval(self.record_effect, event_id, handler))

    async def active_count_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Pending / running / dead counts per event type, with the oldest ready age."""
        return list(await conn.fetch(self.active_counts))

    async def done_count_rows(
        self, conn: asyncpg.Connection, percent: float | None = None
    ) -> list[Any]:
        """Done events per type: exact, or counted on ``percent`` % of the pages and scaled."""
        if percent is None:
            return list(await conn.fetch(self.done_counts))
        return list(await conn.fetch(self.done_counts_sampled, percent))

    async def outbox_rows(self, conn: asyncpg.Connection) -> float:
        """The planner's estimate of the outbox's rows (negative: never analyzed)."""
        rows: float = await conn.fetchval(self.outbox_rows_estimate)
        return rows

    async def dead_handler_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Dead counts per event type and handler."""
        return list(await conn.fetch(self.dead_handlers))

    async def count_prunable(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        include_discarded: bool = False,
    ) -> int:
        """How many events a prune with these settings would delete now."""
        count: int = await conn.fetchval(self.prune_count, age, include_dead, include_discarded)
        return count

    async def prune_once(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        limit: int,
        include_discarded: bool = False,
    ) -> int:
        """Delete one batch of old events (and their ledger rows); return how many."""
        deleted: int = await conn.fetchval(
            self.prune_batch, age, include_dead, include_discarded, limit
        )
        return deleted

    # -- steer ------------------------------------------------------------------------------

    async def database_now(self, conn: asyncpg.Connection) -> dt.datetime:
        """The database clock."""
        now: dt.datetime = await conn.fetchval(self.db_now)
        return now

    async def count_dead_events(self, conn: asyncpg.Connection, sel: SelectionArgs) -> int:
        """How many dead events match (with a handler: where that handler is dead)."""
        count: int = await conn.fetchval(self.count_dead, *sel)
        return count

    async def retry_dead_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Dead -> pending for the next batch after id ``after``; return their ids, sorted."""
        return sorted(r[0] for r in await conn.fetch(self.retry_batch, *sel, after, limit))

    async def discard_dead_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Discard the dead handlers of the next batch after id ``after``; return the ids."""
        return sorted(r[0] for r in await conn.fetch(self.discard_batch, *sel, after, limit))

    async def find_replay(self, conn: asyncpg.Connection, filter_json: str) -> Any:
        """(now, id, started_at, last_id, touched); id NULL when no unfinished replay."""
        return await conn.fetchrow(self.replay_find, filter_json)

    async def start_replay(
        self, conn: asyncpg.Connection, filter_json: str, started_at: dt.datetime, after: int
    ) -> None:
        """Create the replay row unless an unfinished one has this filter."""
        await conn.execute(self.replay_start, filter_json, started_at, after)

    async def replay_counts(
        self,
        conn: asyncpg.Connection,
        sel: SelectionArgs,
        started_at: dt.datetime,
        after: int,
    ) -> dict[str, int]:
        """Events of the selection per state (done: processed before ``started_at``)."""
        lows, highs, event_type, _handler, since, until = sel
        rows = await conn.fetch(
            self.replay_count, lows, highs, event_type, since, until, started_at, after
        )
        return {r["state"]: r["events"] for r in rows}

    async def replay_once(
        self, conn: asyncpg.Connection, sel: SelectionArgs, replay_id: int, limit: int
    ) -> tuple[int, bool]:
        """Replay one batch; return (events replayed, whether the replay is finished)."""
        row = await conn.fetchrow(self.replay_batch, *sel, replay_id, limit)
        if row is None:  # finished meanwhile (by another run of the same replay)
            return 0, True
        return row["replayed"], row["finished"]

    async def events_for_tests(self, conn: asyncpg.Connection, event_type: str | None) -> list[Any]:
        """Every outbox row (of ``event_type`` when given), by id, for pgqueue.testing."""
        return list(await conn.fetch(self.test_events, event_type))

    async def advance_scheduled(
        self, conn: asyncpg.Connection, event_types: Sequence[str], queues: Sequence[str]
    ) -> int:
        """Make the scheduled pending events of these types and queues due now; return how
        many (pgqueue.testing only)."""
        return len(await conn.fetch(self.test_advance, list(event_types), list(queues)))

    async def event_rows(
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
        by_state = (
            states is not None
            and set(states) <= {"running", "dead"}
            and handler is None
            and handler_state is None
        )
        sql = self.list_events_by_state if by_state else self.list_events
        statement = await conn.prepare(sql)
        return list(
            await statement.fetch(
                types, states, handler, handler_state, *times, key, queues, before_id, limit
            )
        )

    async def event_row(self, conn: asyncpg.Connection, event_id: int) -> Any:
        """One event's row, payload included, or None."""
        return await conn.fetchrow(self.get_event, event_id)

    async def live_count_rows(self, conn: asyncpg.Connection, window: float) -> list[Any]:
        """Active counts per type and state, and events done in the last ``window`` s."""
        return list(await conn.fetch(self.live_counts, window))

    async def live_handler_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Handler states of unfinished events, per event type and handler."""
        return list(await conn.fetch(self.live_handlers))

    async def queue_depths(
        self, conn: asyncpg.Connection, queues: Sequence[str], limit: int
    ) -> list[Any]:
        """Per queue: ready and scheduled pending events (each counted up to ``limit``) and
        the oldest ready age in seconds (None when nothing is ready)."""
        return list(await conn.fetch(self.depths, list(queues), limit))

    async def dead_counts(self, conn: asyncpg.Connection, limit: int) -> list[Any]:
        """Dead events per event type, reading at most ``limit`` rows."""
        return list(await conn.fetch(self.dead_by_type, limit))


    # -- limits ---------------------------------------------------------------------------

    async def write_limits(
        self, conn: asyncpg.Connection, names: Sequence[str], concurrency: Sequence[int]
    ) -> None:
        """Store the registry's limits (the operator's overrides stay as they are)."""
        await conn.execute(self.limits_write, names, concurrency)

    async def limit_rows(self, conn: asyncpg.Connection, names: Sequence[str]) -> list[Any]:
        """(handler, concurrency, override) rows of these handlers."""
        return list(await conn.fetch(self.limits_read, names))

    async def acquire_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        wanted: Sequence[int],
        token: uuid.UUID,
        worker_id: str,
        lease_seconds: float,
    ) -> list[tuple[str, int]]:
        """Take up to ``wanted`` free slots per handler; return the (handler, slot) taken."""
        rows = await conn.fetch(self.slots_acquire, names, wanted, token, worker_id, lease_seconds)
        return [(r[0], r[1]) for r in rows]

    async def release_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
    ) -> None:
        """Give back these slots (fenced by the token)."""
        await conn.execute(self.slots_release, names, slots, token)

    async def renew_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of these slots (fenced by the token)."""
        await conn.execute(self.slots_renew, names, slots, token, lease_seconds)

    async def release_all_slots(self, conn: asyncpg.Connection, token: uuid.UUID) -> None:
        """Give back every slot held under ``token``."""
        await conn.execute(self.slots_release_all, token)

    async def limit_list(self, conn: asyncpg.Connection) -> list[Any]:
        """(handler, concurrency, override, running) of every limit."""
        return list(await conn.fetch(self.limits_list))

    async def override_limit(
        self, conn: asyncpg.Connection, handler: str, override: int | None
    ) -> bool:
        """Set (or with None clear) the operator's override; False when no such limit."""
        return await conn.fetchval(self.limit_override, handler, override) is not None


# -- schedule (periodic events) ---------------------------------------------------------------

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

# The schedules with the database clock, for `pgqueue schedules`.
LIST_SCHEDULES = """
SELECT name, expression, timezone, event_type, queue, priority, last_tick, synced_at,
       now() AS db_now
FROM {s}.schedules ORDER BY name
"""

# $1 name. Forget a schedule (removed from code; a worker that still has it recreates it).
DELETE_SCHEDULE = "DELETE FROM {s}.schedules WHERE name = $1 RETURNING name"

DB_NOW = "SELECT now()"


async def database_now(conn: asyncpg.Connection) -> dt.datetime:
    """The database clock (the start of the current transaction)."""
    now: dt.datetime = await conn.fetchval(DB_NOW)
    return now


@lru_cache(maxsize=32)
def schedule_queries_for(schema: str) -> ScheduleQueries:
    """The schedule statements for ``schema``."""
    return ScheduleQueries(schema)


class ScheduleQueries:
    """The schedule statements above, with the schema filled in."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.upsert = UPSERT_SCHEDULE.format(s=s)
        self.emit = EMIT_TICK.format(s=s)
        self.list = LIST_SCHEDULES.format(s=s)
        self.delete = DELETE_SCHEDULE.format(s=s)

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
            self.upsert, name, expression, timezone, event_type, payload_json, queue, priority
        )

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
            self.emit, name, tick, expression, timezone, text, f"cron:{name}:{text}"
        )
        return new_id

    async def schedule_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Every schedule row, with the database clock as ``db_now``."""
        return list(await conn.fetch(self.list))

    async def delete_schedule(self, conn: asyncpg.Connection, name: str) -> bool:
        """Delete one schedule row; False when there was none."""
        return await conn.fetchval(self.delete, name) is not None
