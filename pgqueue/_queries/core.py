"""Producer and worker statements: insert, claim, complete, leases, rescue, next due, and
the database clock.

The producer's methods are plans (see ``plans.py``): every driver that can enqueue runs the
same ones. The worker's methods are asyncpg only.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from .._models import PRIORITY_MAX, PRIORITY_MIN
from ._base import Area
from .plans import Plan

# Priorities run from PRIORITY_MAX (first) down to PRIORITY_MIN; the constraint
# outbox_priority_range (sql/0004_schedule.sql) holds them there. A fixed, small range lets the
# claim probe each level directly: `priority = p AND run_at BETWEEN floor AND now()` is then one
# bounded range of outbox_ready_idx per level. A loose index scan over the priorities present
# (the first version) had to land at each level's oldest entry, which is where the claimed
# rows' entries pile up until VACUUM (see _worker/floor.py), so every claim walked them again.
PRIORITY_LEVELS = f"generate_series({PRIORITY_MAX}, {PRIORITY_MIN}, -1) AS p(priority)"

# The database clock: relative --since / --until are resolved on it, and ages shown next to
# rows read in an earlier statement are measured on it, like every time in pgqueue.
DATABASE_NOW = "SELECT now()"


async def database_now(conn: asyncpg.Connection) -> dt.datetime:
    """The database clock (the start of the current transaction)."""
    now: dt.datetime = await conn.fetchval(DATABASE_NOW)
    return now


class ClaimedRow(NamedTuple):
    """A row returned by the claim statement.

    A named tuple, built straight from the record's values: a frozen dataclass's __init__
    (one object.__setattr__ per field) cost 0.87 us per claimed row, this 0.2 us.
    """

    id: int
    event_type: str
    payload: str
    attempt: int
    handlers: str | None
    created_at: dt.datetime
    db_now: float
    age: float
    headers: str | None = None  # JSON text: the producer's trace context, if any
    ordering_key: str | None = None  # the producer's ordering key (sql/0017), if any
    behind: bool = False  # an earlier event of its key is unfinished (see CLAIM)


class CoreQueries(Area):
    """What producers and workers run, for one schema."""

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.channel = f"{schema}.outbox"  # the NOTIFY channel of the outbox trigger
        self.skippers_key = f"{schema}.outbox skippers"  # SKIPPERS' $1

    # -- producer -------------------------------------------------------------------------------

    # $1 event_type, $2 payload (JSON text), $3 run_at (NULL = now), $4 idempotency key, $5 queue,
    # $6 priority
    # ON CONFLICT names no target: a target column needs SELECT on it, and a producer may not read
    # idempotency keys (they often hold personal data; sql/0012). The only other unique index is
    # the primary key, an identity nobody else writes. Measured (bench/key_lookup_probe.py): the
    # same cost per row as the named target.
    INSERT_ONE = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority)
VALUES ($1, $2::jsonb, COALESCE($3::timestamptz, now()), $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING id
"""

    # $1 event_type, $2 payload (JSON text), $3 run_at (NULL = now), $4 key, $5 queue, $6 priority,
    # $7 headers (JSON text: the W3C trace context of the producer), $8 ordering key. INSERT_ONE
    # plus headers and ordering key: used only when a trace context is active or a key is given,
    # so other producers keep the statement they had (and pay nothing for either column).
    INSERT_ONE_HEADERS = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority, headers,
                        ordering_key)
VALUES ($1, $2::jsonb, COALESCE($3::timestamptz, now()), $4, $5, $6, $7::jsonb, $8)
ON CONFLICT DO NOTHING
RETURNING id
"""

    # $1 idempotency keys. The ids of keys the producer already knows, through a SECURITY DEFINER
    # function (sql/0012): the producer role cannot read the key column itself.
    IDS_BY_KEYS = "SELECT idempotency_key, id FROM {s}.event_ids_by_keys($1::text[])"

    def insert_one(
        self,
        event_type: str,
        payload_json: str,
        run_at: dt.datetime | None,
        key: str | None,
        queue: str,
        priority: int = 0,
        headers: str | None = None,
        ordering_key: str | None = None,
    ) -> Plan[int]:
        """Insert one event; with a key already used, return the existing event's id.

        ``headers`` (JSON text) and ``ordering_key`` are stored with the event; without them
        the statement has neither column at all.
        """
        args = (event_type, payload_json, run_at, key, queue, priority)
        rows = yield (
            (self.INSERT_ONE, args)
            if headers is None and ordering_key is None
            else (self.INSERT_ONE_HEADERS, (*args, headers, ordering_key))
        )
        if not rows:
            # The key was already used: its event's id, through the SECURITY DEFINER lookup
            # (the producer may not read keys).
            rows = [(r[1],) for r in (yield (self.IDS_BY_KEYS, ([key],)))]
            if not rows:  # the conflicting row was deleted between the two statements
                raise RuntimeError(f"idempotency key {key!r} conflicted but no row holds it")
        new_id: int = rows[0][0]
        return new_id

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
ON CONFLICT DO NOTHING
RETURNING id
"""

    # $1-$6 as INSERT_MANY, $7 headers (JSON text) for every row of the chunk (one enqueue_many
    # call runs in one trace context), $8 ordering keys (NULL elements: no key).
    INSERT_MANY_HEADERS = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue, priority, headers,
                        ordering_key)
SELECT t, p::jsonb, COALESCE(r, now()), k, q, pr, $7::jsonb, ok
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::smallint[],
            $8::text[])
     WITH ORDINALITY AS i(t, p, r, k, q, pr, ok, n)
ORDER BY n
ON CONFLICT DO NOTHING
RETURNING id
"""

    def insert_many(
        self,
        types: Sequence[str],
        payloads: Sequence[str],
        run_ats: Sequence[dt.datetime | None],
        keys: Sequence[str | None],
        queues: Sequence[str],
        priorities: Sequence[int],
        headers: str | None = None,
        ordering_keys: Sequence[str | None] | None = None,
    ) -> Plan[list[int]]:
        """Insert many events in one statement; return ids in input order.

        ``headers`` (JSON text), when given, is stored with every event of the chunk;
        ``ordering_keys``, when given, one per event.
        """
        args = (types, payloads, run_ats, keys, queues, priorities)
        rows = list(
            (yield (self.INSERT_MANY, args))
            if headers is None and ordering_keys is None
            else (yield (self.INSERT_MANY_HEADERS, (*args, headers, ordering_keys)))
        )
        # Identity values are assigned in insertion order, which follows ORDER BY n, so the
        # inserted rows sorted by id line up with the input rows when none was skipped.
        inserted = sorted(r[0] for r in rows)
        if len(inserted) == len(types):
            return inserted
        # Some keys were already used (or repeated in the chunk): every keyed row takes its
        # key's id (the producer may not read keys, so it asks the SECURITY DEFINER lookup),
        # the others the remaining inserted ids in order.
        found = yield (self.IDS_BY_KEYS, ([k for k in keys if k is not None],))
        by_key: dict[str, int] = {r[0]: r[1] for r in found}
        keyed = set(by_key.values())
        plain = iter(i for i in inserted if i not in keyed)
        return [by_key[key] if key is not None else next(plain) for key in keys]

    # $1 event types, $2 payloads (JSON text). INSERT_MANY for chunks with every other column
    # defaulted (priority 0 included): no ordinality, no conflict arbiter, two arrays instead of
    # five.
    INSERT_PLAIN = """
INSERT INTO {s}.outbox (event_type, payload)
SELECT t, p::jsonb FROM unnest($1::text[], $2::text[]) AS i(t, p)
RETURNING id
"""

    def insert_plain(self, types: Sequence[str], payloads: Sequence[str]) -> Plan[list[int]]:
        """Insert events with default run_at, queue and no key; return ids in input order.

        Identity values are assigned in insertion order, which follows the array order.
        """
        return sorted(r[0] for r in (yield (self.INSERT_PLAIN, (types, payloads))))

    # $1 event id, $2 handler name
    RECORD_EFFECT = """
INSERT INTO {s}.effects (event_id, handler) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING true
"""

    def record_effect(self, event_id: int, handler: str) -> Plan[bool]:
        """Record (event, handler) in the effects ledger; False when it was already there."""
        return bool((yield (self.RECORD_EFFECT, (event_id, handler))))

    # -- worker ---------------------------------------------------------------------------------

    # $1 queue, $2 event types this worker handles, $3 batch size, $4 lease token, $5 worker id, $6
    # lease seconds, $7 the lowest run_at to read (epoch seconds; -Infinity = all; see
    # _worker/floor.py). One statement claims a batch of ready events, the highest priority first,
    # then by (run_at, id); it skips rows another worker has locked, and the UPDATE counts the
    # attempt at claim time (so a handler that kills its worker still uses up attempts). now() is
    # the database clock, returned for the worker's retry arithmetic.
    #
    # Shape: `ctid = ANY(ARRAY(subquery))` makes the pick an InitPlan run once, and the UPDATE a TID
    # scan straight to the row versions the pick locked. The first version joined a CTE instead; the
    # planner then hashed the whole table (a seq scan: 10 of 15 ms for 500 rows among 50,000). `id =
    # ANY(...)` went through the primary key for each row: 1.5 us more per row (12.6 -> 11.1 us
    # wall, 8.8 -> 8.0 us backend CPU, 1,000-row claims alternated A/B). Why a ctid is safe here:
    # the pick holds the row lock on that version until the UPDATE, so nobody can update or remove
    # it meanwhile. A version a concurrent commit created after this statement's snapshot (the lock
    # followed the update chain) is invisible to the TID scan: that row is left pending for the next
    # claim, never claimed twice. `o.state = 'pending'` is the belt to those braces: only a pending
    # row becomes running.
    #
    # `behind` (sql/0017_ordering.sql, pgqueue/_worker/ordering.py): whether a keyed event has an
    # earlier unfinished event of its key. Only such events ask the ordering gate's HEADS
    # statement which handlers may run; the others are their key's head for every handler. One
    # probe of outbox_ordering_idx per keyed row, none for an unkeyed one (the CASE). Measured
    # (bin/bench --only ordering, 100,000 distinct keys, ordered handler vs unkeyed drain, shared
    # machine): a HEADS round trip for every keyed batch ran at 0.31x the unkeyed drain.
    #
    # Priorities (sql/0004_schedule.sql): the pick goes through the levels, highest first, and per
    # level reads outbox_ready_idx from the floor up to now(): `priority = p` makes both run_at
    # bounds limits of the index range, so future-dated events (delayed, or durable retries) are
    # never read, whatever their priority, and a future high-priority event holds back nobody. A
    # plain `ORDER BY priority DESC, run_at, id` over the same index had to step over every future
    # entry of a queue whenever the batch did not fill (100,000 events due tomorrow, 200 ready: 60
    # ms against 5.6 ms with 0001's (queue, run_at, id) index). The nested loop pulls level by level
    # and stops at LIMIT $3, so no row beyond the batch is locked; an empty level costs one index
    # descent.
    CLAIM = (
        """
UPDATE {s}.outbox AS o
SET state = 'running', attempt = o.attempt + 1, lease_token = $4, leased_by = $5,
    lease_expires_at = now() + make_interval(secs => $6)
WHERE o.ctid = ANY(ARRAY(
    SELECT c.ctid FROM """
        + PRIORITY_LEVELS
        + """ CROSS JOIN LATERAL (
        SELECT ctid FROM {s}.outbox
        WHERE state = 'pending' AND queue = $1 AND priority = p.priority
          AND run_at <= now() AND run_at >= to_timestamp($7::float8)
          AND event_type = ANY($2::text[])
        ORDER BY run_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) AS c
    LIMIT $3
)) AND o.state = 'pending'
RETURNING o.id, o.event_type, o.payload, o.attempt, o.handlers, o.created_at,
          extract(epoch FROM now())::float8 AS db_now,
          extract(epoch FROM now() - o.created_at)::float8 AS age, o.headers, o.ordering_key,
          CASE WHEN o.ordering_key IS NULL THEN false
               ELSE EXISTS (SELECT 1 FROM {s}.outbox AS e
                            WHERE e.ordering_key = o.ordering_key AND e.id < o.id
                              AND e.state IN ('pending', 'running', 'dead')) END AS behind
"""
    )

    async def claim(
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
            self.CLAIM, queue, event_types, limit, token, worker_id, lease_seconds, floor
        )
        make = ClaimedRow._make
        return [make(r) for r in rows]

    # $1 ids, $2 their (one) lease token. Every handler succeeded and the event had no per-handler
    # record: the happy path costs this one statement per claimed batch and no per-handler write.
    # `id = ANY($1)` keeps a primary-key index scan even under a generic plan (an unnest join
    # turned into a 35 ms plan after the fifth execution, measured on 500 rows).
    COMPLETE_DONE = """
UPDATE {s}.outbox
SET state = 'done', processed_at = now(), lease_token = NULL, leased_by = NULL,
    lease_expires_at = NULL, last_error = NULL
WHERE id = ANY($1::bigint[]) AND lease_token = $2
RETURNING id
"""

    async def complete_done(
        self, conn: asyncpg.Connection, ids: Sequence[int], token: uuid.UUID
    ) -> list[int]:
        """Mark events of one claim done (fenced by its token); return the ids updated."""
        return [r[0] for r in await conn.fetch(self.COMPLETE_DONE, ids, token)]

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
WHERE o.id = u.id AND o.lease_token = u.token
RETURNING o.id
"""

    async def complete(
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
            self.COMPLETE, ids, tokens, states, delays, refunds, handlers, errors
        )
        return [r[0] for r in rows]

    # $1 ids, $2 lease tokens, $3 lease seconds. Returns the ids still held (renewed, or row-locked
    # by another session this round). SKIP LOCKED: one row locked by someone else (an operator's
    # open UPDATE) must not hold up the renewal of every other lease of this worker.
    HEARTBEAT = """
WITH mine AS (
    SELECT o.id FROM {s}.outbox AS o
    JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token) ON o.id = u.id
    WHERE o.lease_token = u.token
), lockable AS (
    SELECT o.id FROM {s}.outbox AS o
    JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token) ON o.id = u.id
    WHERE o.lease_token = u.token
    FOR UPDATE OF o SKIP LOCKED
), renewed AS (
    UPDATE {s}.outbox AS o
    SET lease_expires_at = now() + make_interval(secs => $3)
    FROM lockable WHERE o.id = lockable.id
    RETURNING o.id
)
SELECT id FROM mine
"""

    async def heartbeat(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        tokens: Sequence[uuid.UUID],
        lease_seconds: float,
    ) -> list[int]:
        """Renew the leases still held; return their ids (renewed or locked by another
        session this round: still ours either way)."""
        return [r[0] for r in await conn.fetch(self.HEARTBEAT, ids, tokens, lease_seconds)]

    # $1 max rows. Returns leases that expired (their worker died or froze) to pending. The attempt
    # stays counted; SKIP LOCKED lets several workers rescue at once without waiting.
    # Run in RESCUE's transaction, before it. outbox_lease_idx keeps an entry for every row that
    # was ever running until VACUUM, and lease_expires_at < now() matches all the finished ones:
    # the planner's bitmap scan read them all on every rescue (20 ms after 300,000 events, growing
    # until VACUUM) and never marks them dead. A plain index scan marks them as it passes: the
    # first rescue after 300,000 events took 88 ms, the next ones 1.6 and 0.8 ms.
    RESCUE_PLAN = "SET LOCAL enable_bitmapscan = off"

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

    async def rescue(
        self, conn: asyncpg.Connection, held: Sequence[uuid.UUID] = (), limit: int = 1000
    ) -> list[Any]:
        """Return expired leases to pending, except the ``held`` lease tokens (the caller's:
        it is alive, it runs them); return (id, event_type, leased_by) rows."""
        async with conn.transaction():
            await conn.execute(self.RESCUE_PLAN)
            return list(await conn.fetch(self.RESCUE, limit, list(held)))

    # $1 queue, $2 event types. Seconds until the next pending event of these types falls due
    # (NULL when none), so an idle worker wakes exactly when a delayed retry is due. Only future
    # rows: a row due now that the claim did not take is locked by someone else (or below the
    # claim's floor, see _worker/floor.py), and answering "due now" for it made an idle worker claim
    # in a tight loop. Per priority level the first future row: `run_at > now()` starts each index
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

    async def next_due(
        self, conn: asyncpg.Connection, queue: str, event_types: Sequence[str]
    ) -> float | None:
        """Seconds until the next pending event falls due (None: nothing in the future)."""
        value: float | None = await conn.fetchval(self.NEXT_DUE, queue, event_types)
        return value

    # $1 the skippers lock's first key ('<schema>.outbox skippers'), $2 queues, $3 NULL or the
    # transactions of an earlier look. The producer transactions that skipped their NOTIFY behind
    # a gate holder (sql/0011) and are still committing: each holds this advisory lock in share
    # mode until its commit is visible. pg_locks is one consistent copy of the lock table, and
    # advisory locks never take the fast path, so a skipper missing here has released the lock,
    # and its commit is visible to any claim that starts afterwards.
    # Why look instead of taking the lock exclusively (which waits for all of them): while a
    # worker holds or waits for it, producers cannot take it shared and must notify for
    # themselves. With an idle worker listening, 16 pgbench clients then sent 709 such
    # notifications beside 409 gate holders' in 5 s, and ran at 0.40x a plain table's tps
    # instead of 0.9x with a bare listener.
    SKIPPERS = """
SELECT coalesce(array_agg(l.virtualtransaction), '{}')
FROM pg_locks AS l
WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock' AND l.objsubid = 2
  AND l.classid = (hashtext($1)::bigint & 4294967295)::oid
  AND l.objid = ANY(ARRAY(SELECT (hashtext(q)::bigint & 4294967295)::oid
                          FROM unnest($2::text[]) AS q))
  AND ($3::text[] IS NULL OR l.virtualtransaction = ANY($3::text[]))
"""

    async def skippers(
        self,
        conn: asyncpg.Connection,
        queues: Sequence[str],
        among: Sequence[str] | None = None,
    ) -> list[str]:
        """The producer transactions that skipped their NOTIFY on ``queues`` and are still
        committing (of ``among``, when given): their virtual transaction ids."""
        found: list[str] = await conn.fetchval(self.SKIPPERS, self.skippers_key, queues, among)
        return found
