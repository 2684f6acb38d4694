"""Every runtime SQL statement (DML), and one small typed function per statement.

The SQL text is built once per schema (the only identifier, validated and quoted) and then
stays fixed, so asyncpg's statement cache prepares each statement once per connection.
Values are always bound parameters.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg

from ._settings import quote_ident

# -- producer ---------------------------------------------------------------------------------

# $1 event_type, $2 payload (JSON text), $3 run_at (NULL = now), $4 idempotency key, $5 queue
INSERT_ONE = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue)
VALUES ($1, $2::jsonb, COALESCE($3::timestamptz, now()), $4, $5)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""

# $1 idempotency key
ID_BY_KEY = "SELECT id FROM {s}.outbox WHERE idempotency_key = $1"

# $1 idempotency keys
IDS_BY_KEYS = "SELECT idempotency_key, id FROM {s}.outbox WHERE idempotency_key = ANY($1::text[])"

# $1 event types, $2 payloads (JSON text), $3 run_at (NULL = now), $4 keys, $5 queues.
# One statement per chunk: unnest is ~15x faster than row-at-a-time inserts, and the
# statement-level trigger sends one NOTIFY for the whole chunk.
INSERT_MANY = """
INSERT INTO {s}.outbox (event_type, payload, run_at, idempotency_key, queue)
SELECT t, p::jsonb, COALESCE(r, now()), k, q
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])
     WITH ORDINALITY AS i(t, p, r, k, q, n)
ORDER BY n
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, idempotency_key
"""

# $1 event types, $2 payloads (JSON text). INSERT_MANY for chunks with every other column
# defaulted: no ordinality, no conflict arbiter, two arrays instead of five.
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

# $1 queue, $2 event types this worker handles, $3 batch size, $4 lease token, $5 worker id,
# $6 lease seconds.
# One statement claims a batch: the CTE walks outbox_ready_idx in (run_at, id) order, skips rows
# another worker has locked, and the UPDATE counts the attempt at claim time (so a handler that
# kills its worker still uses up attempts). now() is the database clock, returned for the
# worker's retry arithmetic.
#
# Shape: `id = ANY(ARRAY(subquery))` makes the pick an InitPlan run once, and the UPDATE an
# index scan on the primary key. The first version joined a CTE instead; the planner then
# hashed the whole table (a seq scan: 10 of 15 ms for 500 rows among 50,000).
CLAIM = """
UPDATE {s}.outbox AS o
SET state = 'running', attempt = o.attempt + 1, lease_token = $4, leased_by = $5,
    lease_expires_at = now() + make_interval(secs => $6)
WHERE o.id = ANY(ARRAY(
    SELECT id FROM {s}.outbox
    WHERE state = 'pending' AND queue = $1 AND run_at <= now() AND event_type = ANY($2::text[])
    ORDER BY run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
))
RETURNING o.id, o.event_type, o.payload, o.attempt, o.handlers, o.created_at,
          extract(epoch FROM now())::float8 AS db_now,
          extract(epoch FROM now() - o.created_at)::float8 AS age
"""

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

# $1 queue, $2 event types. Seconds until the next pending event of these types is due
# (NULL when none), so an idle worker wakes exactly when a delayed retry is due.
NEXT_DUE = """
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM {s}.outbox
WHERE state = 'pending' AND queue = $1 AND event_type = ANY($2::text[])
"""

# -- admin ------------------------------------------------------------------------------------

STATUS = """
SELECT event_type, state, count(*) AS events,
       extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'pending' AND run_at <= now()))::float8 AS oldest_ready_age
FROM {s}.outbox
GROUP BY event_type, state
ORDER BY event_type, state
"""

DEAD_HANDLERS = """
SELECT o.event_type, h.key AS handler, count(*) AS events
FROM {s}.outbox AS o, jsonb_each(o.handlers) AS h
WHERE o.state = 'dead' AND h.value ->> 'state' = 'dead'
GROUP BY o.event_type, h.key
ORDER BY o.event_type, h.key
"""

# $1 ids (NULL = any), $2 event type (NULL = any), $3 handler (NULL = every dead handler).
# Dead handlers become pending with a fresh attempt budget; handlers that succeeded stay done
# and do not run again.
RETRY_DEAD = """
UPDATE {s}.outbox AS o
SET state = 'pending', run_at = now(), last_error = NULL,
    handlers = (
        SELECT jsonb_object_agg(h.key, CASE
            WHEN h.value ->> 'state' = 'dead' AND ($3::text IS NULL OR h.key = $3::text)
            THEN jsonb_build_object('state', 'pending', 'attempts', 0, 'seen', o.attempt)
            ELSE h.value END)
        FROM jsonb_each(o.handlers) AS h)
WHERE o.state = 'dead'
  AND ($1::bigint[] IS NULL OR o.id = ANY($1::bigint[]))
  AND ($2::text IS NULL OR o.event_type = $2::text)
  AND ($3::text IS NULL OR o.handlers -> $3::text ->> 'state' = 'dead')
RETURNING o.id
"""


# $1 age (interval), $2 include dead events. What prune would delete.
PRUNE_COUNT = """
SELECT count(*) FROM {s}.outbox
WHERE (state = 'done' AND processed_at < now() - $1::interval)
   OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
"""

# $1 age (interval), $2 include dead events, $3 batch size. One batch, in its own transaction:
# short transactions keep locks and the xmin horizon short on a busy queue. The effects ledger
# rows of the deleted events go with them.
PRUNE_BATCH = """
WITH gone AS (
    DELETE FROM {s}.outbox
    WHERE id IN (
        SELECT id FROM {s}.outbox
        WHERE (state = 'done' AND processed_at < now() - $1::interval)
           OR ($2::boolean AND state = 'dead' AND created_at < now() - $1::interval)
        LIMIT $3
        FOR UPDATE SKIP LOCKED)
    RETURNING id
), ledger AS (
    DELETE FROM {s}.effects WHERE event_id IN (SELECT id FROM gone)
)
SELECT count(*) FROM gone
"""


# -- limits -----------------------------------------------------------------------------------
# Per-handler concurrency slots (sql/0002_limits.sql, pgqueue/_limits.py). The slot token is
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
        self.status = STATUS.format(s=s)
        self.dead_handlers = DEAD_HANDLERS.format(s=s)
        self.retry_dead = RETRY_DEAD.format(s=s)
        self.prune_count = PRUNE_COUNT.format(s=s)
        self.prune_batch = PRUNE_BATCH.format(s=s)
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
    ) -> int:
        """Insert one event; with a key already used, return the existing event's id."""
        new_id: int | None = await conn.fetchval(
            self.insert_one, event_type, payload_json, run_at, key, queue
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
    ) -> list[int]:
        """Insert many events in one statement; return ids in input order."""
        rows = await conn.fetch(self.insert_many, types, payloads, run_ats, keys, queues)
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
    ) -> list[ClaimedRow]:
        """Claim up to ``limit`` ready events under lease ``token``."""
        rows = await conn.fetch(
            self.claim, queue, event_types, limit, token, worker_id, lease_seconds
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
        """Seconds until the next pending event is due (negative: overdue; None: none)."""
        value: float | None = await conn.fetchval(self.next_due, queue, event_types)
        return value

    async def record_effect_once(
        self, conn: asyncpg.Connection, event_id: int, handler: str
    ) -> bool:
        """Record (event, handler) in the effects ledger; False when it was already there."""
        return bool(await conn.fetchval(self.record_effect, event_id, handler))

    async def status_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Counts per event type and state, with the oldest ready age."""
        return list(await conn.fetch(self.status))

    async def dead_handler_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Dead counts per event type and handler."""
        return list(await conn.fetch(self.dead_handlers))

    async def count_prunable(
        self, conn: asyncpg.Connection, age: dt.timedelta, include_dead: bool
    ) -> int:
        """How many events a prune with these settings would delete now."""
        count: int = await conn.fetchval(self.prune_count, age, include_dead)
        return count

    async def prune_once(
        self, conn: asyncpg.Connection, age: dt.timedelta, include_dead: bool, limit: int
    ) -> int:
        """Delete one batch of old events (and their ledger rows); return how many."""
        deleted: int = await conn.fetchval(self.prune_batch, age, include_dead, limit)
        return deleted

    async def retry_dead_events(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int] | None,
        event_type: str | None,
        handler: str | None,
    ) -> list[int]:
        """Dead -> pending for the matching events; return their ids."""
        rows = await conn.fetch(
            self.retry_dead, list(ids) if ids is not None else None, event_type, handler
        )
        return [r[0] for r in rows]

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
