"""Statements of flow control by operators: cancel events, wait for an outcome, pause queues.

None of them is on an event's path: the worker reads only PAUSED_AMONG (once per poll
interval) and CANCELLED_AMONG (only for events whose lease renewal missed).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from ._base import Area
from .steer import SelectionArgs, _selection

# Pending and running events of the selection: $1 id lows, $2 id highs, $3 event type,
# $4 created since, $5 created before, $6 queue, $7 ordering key (NULL = any): SelectionArgs
# without its handler. Spelled as two arms so that a custom plan can read the two partial
# indexes (outbox_ready_idx, outbox_lease_idx) instead of the table.
_CANCELLABLE = "(o.state = 'pending' OR o.state = 'running') AND" + _selection(
    "$1", "$2", "$3", "$4", "$5", "$6", "$7"
)


def _cancellable(sel: SelectionArgs) -> tuple[Any, ...]:
    """_CANCELLABLE's $1-$7 of a selection (cancel selects events, not handlers)."""
    lows, highs, event_type, _handler, since, until, queue, key = sel
    return lows, highs, event_type, since, until, queue, key


class FlowQueries(Area):
    """Cancel, reschedule, wait and pause statements, for one schema."""

    # -- cancel ---------------------------------------------------------------------------------

    # $1-$7 the selection (see _CANCELLABLE).
    COUNT_CANCELLABLE = (
        """
SELECT count(*) FILTER (WHERE o.state = 'pending') AS pending,
       count(*) FILTER (WHERE o.state = 'running') AS running
FROM {s}.outbox AS o WHERE """
        + _CANCELLABLE
    )

    async def count_cancellable(
        self, conn: asyncpg.Connection, sel: SelectionArgs
    ) -> tuple[int, int]:
        """(pending, running) events of the selection."""
        # A fresh prepared statement: a custom plan, where the NULL filters fold away and the
        # partial indexes can match (see SteerQueries.list_events).
        statement = await conn.prepare(self.COUNT_CANCELLABLE)
        row = await statement.fetchrow(*_cancellable(sel))
        assert row is not None
        return row["pending"], row["running"]

    # $1-$7 as COUNT_CANCELLABLE, $8 after id, $9 batch size, $10 the reason (kept as
    # last_error). Walks by id like retry's batches, so an event cancelled twice is counted once.
    # A running event loses its lease here (outbox_lease_iff_running): its worker's completion
    # write is refused by the lease fence, and its next heartbeat finds the event cancelled
    # (CANCELLED_AMONG) and cancels the handler tasks. leased_by stays, for the audit: which
    # worker was running it.
    CANCEL_BATCH = (
        """
WITH picked AS (
    SELECT o.id FROM {s}.outbox AS o WHERE """
        + _CANCELLABLE
        + """
      AND o.id > $8
    ORDER BY o.id LIMIT $9
    FOR UPDATE
)
UPDATE {s}.outbox AS o
SET state = 'cancelled', last_error = $10, lease_token = NULL, lease_expires_at = NULL
FROM picked
WHERE o.id = picked.id
RETURNING o.id
"""
    )

    async def cancel_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int, reason: str
    ) -> list[int]:
        """Cancel the next batch after id ``after``; return the ids, sorted."""
        statement = await conn.prepare(self.CANCEL_BATCH)
        rows = await statement.fetch(*_cancellable(sel), after, limit, reason)
        return sorted(r["id"] for r in rows)

    # $1 event ids whose lease renewal just missed. Those an operator cancelled (the others were
    # taken over after an expired lease). Primary-key lookups of a handful of ids, run only when
    # a renewal missed something: nothing on the heartbeat's usual path.
    CANCELLED_AMONG = """
SELECT id FROM {s}.outbox WHERE id = ANY($1::bigint[]) AND state = 'cancelled'
"""

    async def cancelled_among(self, conn: asyncpg.Connection, ids: list[int]) -> set[int]:
        """The events of ``ids`` that are cancelled."""
        return {r[0] for r in await conn.fetch(self.CANCELLED_AMONG, ids)}

    # $1 event ids, $2 the new run_at. Pending events only (a running one is under way; others
    # are final). Never earlier than now(): the claim's ready floor (pgqueue/_worker/floor.py)
    # relies on rows that turn due getting run_at >= now(), so "run it now" is exactly now().
    RESCHEDULE = """
UPDATE {s}.outbox SET run_at = GREATEST($2::timestamptz, now())
WHERE id = ANY($1::bigint[]) AND state = 'pending'
RETURNING id
"""

    async def reschedule(
        self, conn: asyncpg.Connection, ids: list[int], run_at: dt.datetime
    ) -> list[int]:
        """Move the pending events of ``ids`` to ``run_at`` (now at the earliest)."""
        return sorted(r[0] for r in await conn.fetch(self.RESCHEDULE, ids, run_at))

    # -- wait -----------------------------------------------------------------------------------

    # $1 event id. One primary-key lookup per poll of pgqueue.wait (never the payload).
    WAIT_POLL = """
SELECT state, attempt, left(last_error, 2000) AS last_error, processed_at,
       handlers::text AS handlers
FROM {s}.outbox WHERE id = $1
"""

    async def wait_poll(self, conn: asyncpg.Connection, event_id: int) -> Any:
        """(state, attempt, last_error, processed_at, handlers) of one event, or None."""
        return await conn.fetchrow(self.WAIT_POLL, event_id)

    # -- pause ----------------------------------------------------------------------------------

    # $1 queue, $2 who, $3 reason. Returns a row only when the queue was not paused already.
    PAUSE = """
INSERT INTO {s}.queue_pauses (queue, paused_by, reason) VALUES ($1, $2, $3)
ON CONFLICT (queue) DO NOTHING
RETURNING queue
"""

    async def pause(
        self, conn: asyncpg.Connection, queue: str, who: str, reason: str | None
    ) -> bool:
        """Pause ``queue``; False when it was paused already."""
        return await conn.fetchval(self.PAUSE, queue, who, reason) is not None

    # $1 queue. Returns a row only when the queue was paused.
    RESUME = "DELETE FROM {s}.queue_pauses WHERE queue = $1 RETURNING queue"

    async def resume(self, conn: asyncpg.Connection, queue: str) -> bool:
        """Resume ``queue``; False when it was not paused."""
        return await conn.fetchval(self.RESUME, queue) is not None

    # Every paused queue, by name.
    LIST_PAUSES = """
SELECT queue, paused_at, paused_by, reason FROM {s}.queue_pauses ORDER BY queue
"""

    async def list_pauses(self, conn: asyncpg.Connection) -> list[Any]:
        """Every paused queue: (queue, paused_at, paused_by, reason)."""
        return list(await conn.fetch(self.LIST_PAUSES))

    # $1 a worker's queues. Which of them are paused: a primary-key probe per queue, once per
    # poll interval per worker.
    PAUSED_AMONG = "SELECT queue FROM {s}.queue_pauses WHERE queue = ANY($1::text[])"

    async def paused_among(self, conn: asyncpg.Connection, queues: list[str]) -> set[str]:
        """The paused queues among ``queues``."""
        return {r[0] for r in await conn.fetch(self.PAUSED_AMONG, queues)}
