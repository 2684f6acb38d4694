"""The statements of every area, with the schema filled in, and one small typed method per
statement (``Queries``, built once per schema by ``queries_for``)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg

from .._settings import quote_ident
from .admin import (
    ACTIVE_COUNTS,
    DEAD_COUNTS,
    DEAD_HANDLERS,
    DONE_COUNTS,
    DONE_COUNTS_SAMPLED,
    INSERT_MANY_HEADERS,
    INSERT_ONE_HEADERS,
    OUTBOX_ROWS_ESTIMATE,
    PRUNE_BATCH,
    PRUNE_COUNT,
    QUEUE_DEPTHS,
    TEST_ADVANCE,
    TEST_EVENTS,
)
from .core import (
    CLAIM,
    COMPLETE,
    COMPLETE_DONE,
    HEARTBEAT,
    ID_BY_KEY,
    IDS_BY_KEYS,
    INSERT_MANY,
    INSERT_ONE,
    INSERT_PLAIN,
    NEXT_DUE,
    RECORD_EFFECT,
    RESCUE,
)
from .limits import (
    LIMIT_OVERRIDE,
    LIMITS_LIST,
    LIMITS_READ,
    LIMITS_WRITE,
    SLOTS_ACQUIRE,
    SLOTS_RELEASE,
    SLOTS_RELEASE_ALL,
    SLOTS_RENEW,
)
from .steer import (
    COUNT_DEAD,
    DB_NOW,
    DISCARD_BATCH,
    GET_EVENT,
    LIST_EVENTS,
    LIVE_COUNTS,
    LIVE_HANDLERS,
    REPLAY_BATCH,
    REPLAY_COUNT,
    REPLAY_FIND,
    REPLAY_START,
    RETRY_BATCH,
)


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
