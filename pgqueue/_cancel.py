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
from typing import Unpack

import asyncpg

from ._errors import ConfigurationError
from ._queries import SelectionArgs, database_now, queries_for
from ._settings import DEFAULT_SCHEMA
from ._steer import DEFAULT_BATCH, MAX_ID, Filters, Progress, Selection, selection, walk

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


def _selection(filters: Filters) -> Selection:
    sel = selection(**filters)
    if not sel.narrowed:
        raise ConfigurationError(
            "say which events to cancel: ids, an event type, a queue, an ordering key or a "
            "creation-time bound"
        )
    return sel


async def count_cancellable(
    conn: asyncpg.Connection, *, schema: str = DEFAULT_SCHEMA, **filters: Unpack[Filters]
) -> CancelCount:
    """How many pending and running events :func:`cancel` with these filters would touch."""
    args = _selection(filters).args(await database_now(conn))
    pending, running = await queries_for(schema).flow.count_cancellable(conn, args)
    return CancelCount(pending, running)


async def cancel(
    conn: asyncpg.Connection,
    *,
    reason: str,
    batch_size: int = DEFAULT_BATCH,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    **filters: Unpack[Filters],
) -> list[int]:
    """Cancel pending and running events; return their ids, sorted.

    Filters (every given one must match; at least one is required):
    ``ids`` (ids and ``range`` objects), ``event_type``, ``queue``, ``ordering_key``, and
    ``since`` / ``until`` bounding the creation time as for :func:`pgqueue.admin.retry`.
    Done, dead, discarded and cancelled events are left alone. ``reason`` is kept as the
    events' last error (up to 500 characters). Works in id-ordered batches of
    ``batch_size``, one statement each; it may run inside the caller's transaction (running
    events are then cancelled at its commit).
    """
    if not reason.strip():
        raise ConfigurationError("say why the events are cancelled (kept as their last error)")
    sel = _selection(filters)
    queries = queries_for(schema).flow
    text = reason.strip()[:MAX_REASON]

    async def step(
        conn: asyncpg.Connection, args: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        return await queries.cancel_batch(conn, args, after, limit, text)

    return await walk(conn, sel, step, batch_size, progress)


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
