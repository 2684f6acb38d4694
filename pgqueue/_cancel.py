"""Cancelling events: pending and running ones move to the final state ``cancelled``.

A cancelled event is never claimed again, is kept for audit with the reason as its last
error, is counted by ``status`` and is deleted by :func:`pgqueue.admin.prune` with
``include_cancelled``. A running one loses its lease at once; its worker learns at its next
heartbeat (the renewal misses the event, and a lookup of the missed ids finds them cancelled)
and cancels the handler tasks, which record ``cancelled``, never a failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ._errors import ConfigurationError
from ._names import QUEUE_RULE, queue_ok
from ._queries import SelectionArgs, database_now, queries_for
from ._settings import DEFAULT_SCHEMA
from ._steer import DEFAULT_BATCH, MAX_ID, IdSpec, Progress, TimeBound, selection

MAX_REASON = 500


@dataclass(frozen=True)
class CancelCount:
    """What :func:`cancel` with the same filters would touch now."""

    pending: int
    running: int

    @property
    def total(self) -> int:
        """Pending and running together."""
        return self.pending + self.running


async def _args(
    conn: asyncpg.Connection,
    ids: Sequence[IdSpec] | None,
    event_type: str | None,
    queue: str | None,
    since: TimeBound | None,
    until: TimeBound | None,
    schema: str,
) -> tuple[SelectionArgs, int]:
    """The statements' $1-$6, and an id below every selected one."""
    if not (ids or event_type or queue or since or until):
        raise ConfigurationError(
            "say which events to cancel: ids, an event type, a queue or a creation-time bound"
        )
    if queue is not None and not queue_ok(queue):
        raise ConfigurationError(f"{queue!r} is not a queue name: {QUEUE_RULE}")
    sel = selection(ids, event_type, None, since, until)
    lows, highs, etype, _handler, low_time, high_time = sel.args(await database_now(conn))
    return (lows, highs, etype, queue, low_time, high_time), sel.start_after


async def count_cancellable(
    conn: asyncpg.Connection,
    *,
    ids: Sequence[IdSpec] | None = None,
    event_type: str | None = None,
    queue: str | None = None,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> CancelCount:
    """How many pending and running events :func:`cancel` with these filters would touch."""
    args, _ = await _args(conn, ids, event_type, queue, since, until, schema)
    pending, running = await queries_for(schema).flow.count_cancellable(conn, args)
    return CancelCount(pending, running)


async def cancel(
    conn: asyncpg.Connection,
    *,
    reason: str,
    ids: Sequence[IdSpec] | None = None,
    event_type: str | None = None,
    queue: str | None = None,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    batch_size: int = DEFAULT_BATCH,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> list[int]:
    """Cancel pending and running events; return their ids, sorted.

    Every given filter must match (ids and id ranges, event type, queue, creation time as for
    :func:`pgqueue.admin.retry`); at least one is required. Done, dead, discarded and cancelled
    events are left alone. ``reason`` is kept as the events' last error (up to 500
    characters). Works in id-ordered batches of ``batch_size``, one statement each; it may
    run inside the caller's transaction (running events are then cancelled at its commit).
    """
    if not reason.strip():
        raise ConfigurationError("say why the events are cancelled (kept as their last error)")
    if batch_size < 1:
        raise ConfigurationError(f"batch size must be at least 1, got {batch_size}")
    args, after = await _args(conn, ids, event_type, queue, since, until, schema)
    queries = queries_for(schema).flow
    text = reason.strip()[:MAX_REASON]
    touched: list[int] = []
    while True:
        batch = await queries.cancel_batch(conn, args, after, batch_size, text)
        touched += batch
        if progress is not None and batch:
            progress(len(touched))
        if len(batch) < batch_size:
            return touched
        after = batch[-1]


async def reschedule(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    run_at: dt.datetime | dt.timedelta,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> list[int]:
    """Move pending events to ``run_at`` (an aware datetime, or a timedelta from now on the
    database clock); return the ids moved, sorted. A time in the past means now. Running and
    final events are left alone. Workers see the new time within their poll interval."""
    if not ids:
        raise ConfigurationError("name the pending events to reschedule by id")
    if any(isinstance(i, bool) or not 1 <= i <= MAX_ID for i in ids):
        raise ConfigurationError(f"event ids are between 1 and {MAX_ID}")
    if isinstance(run_at, dt.datetime) and run_at.tzinfo is None:
        raise ConfigurationError("run_at has no time zone; pass an aware datetime")
    if isinstance(run_at, dt.timedelta):
        try:
            run_at = await database_now(conn) + run_at
        except OverflowError:
            raise ConfigurationError(f"{run_at} from now is past year 9999") from None
    return await queries_for(schema).flow.reschedule(conn, list(ids), run_at)


async def cancel_pending(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    *,
    reason: str,
    schema: str = DEFAULT_SCHEMA,
) -> list[int]:
    """Cancel the events among ``ids`` that are pending or running (the dashboard's action)."""
    if not ids:
        raise ConfigurationError("name the events to cancel by id")
    return await cancel(conn, reason=reason, ids=list(ids), schema=schema)
