"""Steering events after the fact: retry and discard dead ones, replay processed ones.

Each function takes the caller's connection and selects events by id ranges, type, handler,
queue, ordering key and creation time (one :class:`Selection`, which cancel shares). They
work in id-ascending batches, one statement each: :func:`retry` and :func:`discard` may run
inside the caller's transaction; :func:`replay` must not (its batches commit one by one,
which is what makes it resumable).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import asyncpg

from ._errors import ConfigurationError
from ._models import ANY_HANDLER
from ._names import MAX_EVENT_ID, MAX_ORDERING_KEY, QUEUE_RULE, queue_ok
from ._queries import SelectionArgs, database_now, queries_for
from ._settings import DEFAULT_SCHEMA

IdSpec = int | range
"""An event id, or a ``range`` of ids (step 1): ``[7, range(100, 201)]``."""

TimeBound = dt.datetime | dt.timedelta
"""A creation-time bound: an aware datetime, or a timedelta meaning "that long ago"."""

Progress = Callable[[int], None]

DEFAULT_BATCH = 1000


class _Scope(TypedDict, total=False):
    """The filters every event-steering command takes besides the type and the handler."""

    ids: Sequence[IdSpec] | None
    queue: str | None
    ordering_key: str | None
    since: TimeBound | None
    until: TimeBound | None


class Filters(_Scope, total=False):
    """Which events :func:`pgqueue.admin.cancel` and :func:`count_cancellable` select: ids
    and id ranges, event type, queue, ordering key and creation time (every given one must
    match; None = any)."""

    event_type: str | None


class DeadFilters(Filters, total=False):
    """:class:`Filters` and a handler: which dead events retry and discard select."""

    handler: str | None


class ReplayFilters(_Scope, total=False):
    """:class:`Filters` of a replay (its event type is its own argument) and its handler."""

    handler: str | None


@dataclass(frozen=True)
class Selection:
    """Which events a command touches; every given filter must match (AND)."""

    ids: tuple[tuple[int, int], ...] | None = None
    event_type: str | None = None
    handler: str | None = None
    since: TimeBound | None = None
    until: TimeBound | None = None
    queue: str | None = None
    ordering_key: str | None = None

    def args(self, now: dt.datetime) -> SelectionArgs:
        """The bound parameters $1-$8, relative times resolved against ``now``."""
        since, until = _resolve(self.since, now), _resolve(self.until, now)
        if since is not None and until is not None and since >= until:
            raise ConfigurationError(f"--since ({since}) must be before --until ({until})")
        lows = [lo for lo, _ in self.ids] if self.ids is not None else None
        highs = [hi for _, hi in self.ids] if self.ids is not None else None
        return (
            lows,
            highs,
            self.event_type,
            self.handler,
            since,
            until,
            self.queue,
            self.ordering_key,
        )

    @property
    def start_after(self) -> int:
        """An id below every selected one: where an id-ordered walk starts."""
        return min(lo for lo, _ in self.ids) - 1 if self.ids else 0

    @property
    def narrowed(self) -> bool:
        """Whether any filter but the handler is given (an empty one is not)."""
        given = (self.ids, self.event_type, self.since, self.until, self.queue, self.ordering_key)
        return any(given)

    def key(self) -> str:
        """Canonical JSON of the selection as given: a replay rerun with it resumes."""
        key: dict[str, Any] = {
            "event_type": self.event_type,
            "handler": self.handler,
            "ids": self.ids,
            "since": _bound_key(self.since),
            "until": _bound_key(self.until),
        }
        # Only when given: an unfinished replay started before these filters existed keeps
        # its key, and resumes.
        if self.queue is not None:
            key["queue"] = self.queue
        if self.ordering_key is not None:
            key["ordering_key"] = self.ordering_key
        return json.dumps(key, sort_keys=True)


def _resolve(bound: TimeBound | None, now: dt.datetime) -> dt.datetime | None:
    if isinstance(bound, dt.timedelta):
        try:
            return now - bound
        except OverflowError:
            raise ConfigurationError(f"{bound} ago is before year 1; give a shorter age") from None
    return bound


def _bound_key(bound: TimeBound | None) -> str | None:
    if isinstance(bound, dt.timedelta):
        return f"{bound.total_seconds()}s ago"
    return bound.isoformat() if bound is not None else None


MAX_ID = MAX_EVENT_ID


def _id_ranges(ids: Sequence[IdSpec]) -> tuple[tuple[int, int], ...]:
    ranges = []
    for item in ids:
        if isinstance(item, range):
            # Not len(item): it raises OverflowError past sys.maxsize (1..99999999999999999999).
            if item.step != 1 or item.start >= item.stop:
                raise ConfigurationError(f"id range {item!r} must be non-empty with step 1")
            low, high = item.start, item.stop - 1
        elif isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        else:
            raise ConfigurationError(f"event id must be an int or a range, not {item!r}")
        if not 1 <= low <= high <= MAX_ID:
            shown = f"{low}..{high}" if low != high else str(low)
            raise ConfigurationError(f"event ids are between 1 and {MAX_ID}, got {shown}")
        ranges.append((low, high))
    return tuple(ranges)


def selection(
    ids: Sequence[IdSpec] | None = None,
    event_type: str | None = None,
    handler: str | None = None,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    queue: str | None = None,
    ordering_key: str | None = None,
) -> Selection:
    """Validate the filters shared by retry, discard, replay and cancel."""
    if handler == ANY_HANDLER or handler == "":
        raise ConfigurationError(f"{handler!r} is not a handler name")
    if queue is not None and not queue_ok(queue):
        raise ConfigurationError(f"{queue!r} is not a queue name: {QUEUE_RULE}")
    if ordering_key is not None and not (
        isinstance(ordering_key, str) and 1 <= len(ordering_key) <= MAX_ORDERING_KEY
    ):
        got = len(ordering_key) if isinstance(ordering_key, str) else type(ordering_key).__name__
        raise ConfigurationError(
            f"the ordering key must be 1-{MAX_ORDERING_KEY} characters, got {got}"
        )
    for name, bound in (("since", since), ("until", until)):
        if isinstance(bound, dt.datetime) and bound.tzinfo is None:
            raise ConfigurationError(f"{name} has no time zone; pass an aware datetime")
    return Selection(
        _id_ranges(ids) if ids is not None else None,
        event_type,
        handler,
        since,
        until,
        queue,
        ordering_key,
    )


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigurationError(f"batch size must be at least 1, got {batch_size}")


async def count_dead(
    conn: asyncpg.Connection, *, schema: str = DEFAULT_SCHEMA, **filters: Unpack[DeadFilters]
) -> int:
    """How many dead events :func:`retry` or :func:`discard` with these filters would touch."""
    sel = selection(**filters)
    queries = queries_for(schema)
    return await queries.steer.count_dead(conn, sel.args(await database_now(conn)))


Step = Callable[[asyncpg.Connection, SelectionArgs, int, int], Awaitable[list[int]]]
"""One batch of a walk: (connection, selection, after id, batch size) -> the ids touched."""


async def walk(
    conn: asyncpg.Connection,
    sel: Selection,
    step: Step,
    batch_size: int,
    progress: Progress | None,
) -> list[int]:
    """Apply ``step`` to the selected events in id order, one batch at a time; return the
    ids touched, sorted. Walking by id means an event that comes back while the command
    runs (dies again, say) is not picked a second time."""
    _check_batch(batch_size)
    args = sel.args(await database_now(conn))
    touched: list[int] = []
    after = sel.start_after
    while True:
        ids = await step(conn, args, after, batch_size)
        touched += ids
        if progress is not None and ids:
            progress(len(touched))
        if len(ids) < batch_size:
            return touched
        after = ids[-1]


async def retry(
    conn: asyncpg.Connection,
    *,
    batch_size: int = DEFAULT_BATCH,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    **filters: Unpack[DeadFilters],
) -> list[int]:
    """Move dead events back to pending; return their ids.

    Filters (every given one must match): ``ids`` (ids and ``range``
    objects), ``event_type``, ``handler``, ``queue``, ``ordering_key``, and ``since`` /
    ``until`` bounding the creation time (aware datetimes, or timedeltas meaning that long
    ago). With no filter at all, every dead event is retried.

    Only dead handlers run again; handlers that succeeded stay done. With ``handler``, only
    events where that handler is dead are picked, and only it runs again: other dead
    handlers stay dead, and handlers registered since the event died do not run. Retrying
    the event that holds back an ordering key releases the key.
    """
    step = queries_for(schema).steer.retry_batch
    return await walk(conn, selection(**filters), step, batch_size, progress)


async def discard(
    conn: asyncpg.Connection,
    *,
    batch_size: int = DEFAULT_BATCH,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    **filters: Unpack[DeadFilters],
) -> list[int]:
    """Give up on dead events for good; return their ids.

    Their dead handlers (only ``handler`` when given) become ``discarded``; an event with no
    dead handler left becomes ``discarded`` too: kept with its error for audit, never claimed
    again, deleted by :func:`prune` with ``include_discarded``. Filters as :func:`retry`.
    """
    step = queries_for(schema).steer.discard_batch
    return await walk(conn, selection(**filters), step, batch_size, progress)


@dataclass(frozen=True)
class ReplayPreview:
    """What :func:`replay` with the same arguments would do now.

    ``id`` is the unfinished replay it would resume (None: it would start a new one), and
    ``replayed_before`` how many events that replay already replayed. ``to_replay`` counts
    the done events still to replay; ``skipped`` the selected events in other states (they
    are left alone: dead ones are :func:`retry`'s job).
    """

    id: int | None
    to_replay: int
    replayed_before: int
    skipped: dict[str, int]


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of :func:`replay`: this run's count and the replay's total."""

    id: int
    replayed: int
    total: int
    resumed: bool


def _replay_selection(event_type: str, filters: ReplayFilters) -> Selection:
    if not event_type:
        raise ConfigurationError("replay needs an event type (--type)")
    return selection(event_type=event_type, **filters)


async def preview_replay(
    conn: asyncpg.Connection,
    event_type: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    **filters: Unpack[ReplayFilters],
) -> ReplayPreview:
    """Count what :func:`replay` with the same arguments would touch; change nothing."""
    sel = _replay_selection(event_type, filters)
    queries = queries_for(schema)
    found = await queries.steer.replay_find(conn, sel.key())
    started_at = found["started_at"] if found["id"] is not None else found["now"]
    after = found["last_id"] if found["id"] is not None else sel.start_after
    counts = await queries.steer.replay_count(conn, sel.args(started_at), started_at, after)
    return ReplayPreview(
        found["id"],
        counts.pop("done", 0),
        found["touched"] if found["id"] is not None else 0,
        counts,
    )


async def replay(
    conn: asyncpg.Connection,
    event_type: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    **filters: Unpack[ReplayFilters],
) -> ReplayResult:
    """Deliver processed (done) events of ``event_type`` again; return the counts.

    Filters: ``handler``, ``ids``, ``queue``, ``ordering_key``,
    ``since`` and ``until``, as for :func:`retry`.

    To every handler (the event starts over as a first delivery), or only to ``handler``,
    which need not have existed when the events ran (like resetting a consumer's offset):
    its siblings do not run again. The ``pgqueue.once`` ledger rows of the replayed (event,
    handler) pairs are deleted, so handlers guarded by :func:`once` run their effect again.

    Only events processed before the replay started are selected, in id order, in batches of
    ``batch_size``, each committed with the replay's progress in one statement. Call it
    outside a transaction: interrupted and called again with the same arguments, it resumes
    the unfinished replay instead of replaying any event twice.
    """
    sel = _replay_selection(event_type, filters)
    _check_batch(batch_size)
    if conn.is_in_transaction():
        raise ConfigurationError(
            "replay commits one batch at a time: call it outside a transaction"
        )
    queries = queries_for(schema)
    key = sel.key()
    found = await queries.steer.replay_find(conn, key)
    resumed = found["id"] is not None
    while found["id"] is None:
        # Start one. If a concurrent run of the same command started one first, the INSERT
        # does nothing and this finds (and joins) theirs; if that one even finished in
        # between, the next round starts a fresh one.
        await queries.steer.replay_start(conn, key, found["now"], sel.start_after)
        found = await queries.steer.replay_find(conn, key)
    args = sel.args(found["started_at"])
    replayed = 0
    while True:
        count, finished = await queries.steer.replay_batch(conn, args, found["id"], batch_size)
        replayed += count
        if progress is not None and count:
            progress(replayed)
        if finished:
            return ReplayResult(found["id"], replayed, found["touched"] + replayed, resumed)
