"""Reading events for operators: list them with filters, show one, take a live snapshot.

Each function takes the caller's connection and only reads. Listings never carry payloads
(they end up in terminals, logs and tickets; a payload may hold personal data): only
:func:`get_event` returns one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict

from ._models import EventState, HandlerState
from ._pauses import QueuePause, list_paused
from ._queries import database_now, queries_for
from ._settings import DEFAULT_SCHEMA

#: What ``since`` / ``until`` accept: a time, or how long ago (by the database clock).
TimeBound = dt.datetime | dt.timedelta


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class EventSummary(_Frozen):
    """One event in a listing: everything but the payload."""

    id: int
    event_type: str
    queue: str
    state: EventState
    attempt: int
    created_at: dt.datetime
    run_at: dt.datetime
    processed_at: dt.datetime | None
    idempotency_key: str | None
    leased_by: str | None
    lease_expires_at: dt.datetime | None
    #: The event's last error (cut to 500 characters in listings).
    last_error: str | None
    #: Handler name -> its state, for events with per-handler records; None on the happy
    #: path (a done event without records: every handler succeeded at its first attempt).
    handlers: dict[str, HandlerState] | None


class EventPage(_Frozen):
    """A page of :func:`list_events`, newest first."""

    events: list[EventSummary]
    #: Pass as ``before_id`` for the next (older) page; None when this page is the last.
    next_before_id: int | None
    #: The database's clock when the page was read (for ages).
    db_now: dt.datetime


class HandlerDetail(_Frozen):
    """One handler's record for one event (the ``handlers`` column, decoded)."""

    name: str
    state: HandlerState
    attempts: int
    error: str | None
    #: When a pending handler may run again (its backoff), if it is waiting.
    not_before: dt.datetime | None
    updated_at: dt.datetime | None


class EventDetail(EventSummary):
    """Everything about one event, payload included."""

    #: The decoded payload; None when Python cannot decode what PostgreSQL stored (an
    #: integer of over 4,300 digits, nesting deeper than the recursion limit): then see
    #: ``payload_text`` and ``payload_note``.
    payload: dict[str, Any] | None
    #: The payload's JSON text as stored, when it cannot be decoded (else None).
    payload_text: str | None = None
    #: Why the payload could not be decoded (else None).
    payload_note: str | None = None
    lease_token: str | None
    #: Per-handler records; empty when there are none (see ``has_records``).
    handler_records: list[HandlerDetail]
    #: Handlers whose effect :func:`pgqueue.once` recorded for this event.
    effects: list[str]
    db_now: dt.datetime

    @property
    def has_records(self) -> bool:
        """Whether any handler outcome was recorded (False on the happy path)."""
        return bool(self.handler_records)


async def list_events(
    conn: asyncpg.Connection,
    *,
    event_types: Sequence[str] = (),
    states: Sequence[EventState | str] = (),
    handler: str | None = None,
    handler_state: HandlerState | str | None = None,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    idempotency_key: str | None = None,
    queues: Sequence[str] = (),
    before_id: int | None = None,
    limit: int = 50,
    schema: str = DEFAULT_SCHEMA,
) -> EventPage:
    """Events matching every given filter, newest (highest id) first, without payloads.

    ``handler`` / ``handler_state`` match per-handler records: events where that handler (any
    handler, without ``handler``) has a record (in that state). The happy path keeps no
    record, so a done event that needed no retry matches no handler filter. ``since`` (at or
    after) and ``until`` (before) bound ``created_at``; a timedelta means that long ago by
    the database clock. Walk everything by passing each page's ``next_before_id`` back.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    since_at, since_ago = _split(since)
    until_at, until_ago = _split(until)
    queries = queries_for(schema)
    rows = await queries.steer.list_events(
        conn,
        list(event_types) or None,
        [EventState(s).value for s in states] or None,
        handler,
        HandlerState(handler_state).value if handler_state is not None else None,
        (since_at, since_ago, until_at, until_ago),
        idempotency_key,
        list(queues) or None,
        before_id,
        limit + 1,  # one more tells whether an older page exists
    )
    events = [_summary(r) for r in rows[:limit]]
    more = len(rows) > limit
    return EventPage(
        events=events,
        next_before_id=events[-1].id if more else None,
        db_now=rows[0]["db_now"] if rows else await database_now(conn),
    )


async def get_event(
    conn: asyncpg.Connection, event_id: int, *, schema: str = DEFAULT_SCHEMA
) -> EventDetail | None:
    """Everything about one event, payload included; None when there is no such event."""
    row = await queries_for(schema).steer.get_event(conn, event_id)
    if row is None:
        return None
    records = json.loads(row["handlers"]) if row["handlers"] is not None else {}
    payload, text, note = _decoded(row["payload"])
    return EventDetail(
        **_summary_fields(row),
        handlers={name: r.get("state", "pending") for name, r in records.items()} or None,
        payload=payload,
        payload_text=text,
        payload_note=note,
        lease_token=str(row["lease_token"]) if row["lease_token"] else None,
        handler_records=[_handler(name, r) for name, r in sorted(records.items())],
        effects=list(row["effects"]),
        db_now=row["db_now"],
    )


def _decoded(text: str) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(payload, None, None), or (None, the stored text, why) when Python cannot decode it.

    PostgreSQL accepts JSON that Python refuses: these are the events a worker marks dead
    ("payload cannot be decoded"), exactly the ones an operator needs to look at.
    """
    try:
        return json.loads(text), None, None
    except (ValueError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
        return None, text, f"Python cannot decode this payload ({why}); shown as stored"


def _split(bound: TimeBound | None) -> tuple[dt.datetime | None, dt.timedelta | None]:
    if bound is None:
        return None, None
    if isinstance(bound, dt.timedelta):
        return None, bound
    if bound.tzinfo is None:
        raise ValueError(f"{bound.isoformat()} has no time zone; pass an aware datetime")
    return bound, None


def _summary_fields(row: asyncpg.Record) -> dict[str, Any]:
    fields = EventSummary.model_fields.keys() - {"handlers"}
    return {name: row[name] for name in fields}


def _summary(row: asyncpg.Record) -> EventSummary:
    states = row["handler_states"]
    return EventSummary(
        **_summary_fields(row), handlers=json.loads(states) if states is not None else None
    )


def _epoch(value: Any) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(float(value), dt.UTC) if value is not None else None


def _handler(name: str, record: dict[str, Any]) -> HandlerDetail:
    return HandlerDetail(
        name=name,
        state=HandlerState(record.get("state", "pending")),
        attempts=int(record.get("attempts", 0)),
        error=record.get("error"),
        not_before=_epoch(record.get("not_before")),
        updated_at=_epoch(record.get("updated_at")),
    )


class LiveTypeCounts(_Frozen):
    """One event type in a :func:`live_status` snapshot."""

    event_type: str
    pending: int = 0
    running: int = 0
    dead: int = 0
    discarded: int = 0
    cancelled: int = 0
    #: Events of this type done within the snapshot's window.
    done_recently: int = 0
    #: Seconds the oldest ready (due) pending event has waited; None when none is due.
    oldest_ready_age: float | None = None


class LiveHandlerCount(_Frozen):
    """Unfinished events of one type whose handler ``handler`` is in ``state``."""

    event_type: str
    handler: str
    state: HandlerState
    events: int


class LiveStatus(_Frozen):
    """What ``pgqueue status --watch`` shows at each refresh."""

    #: Seconds over which ``done_recently`` and ``throughput`` are counted.
    window: float
    types: list[LiveTypeCounts]
    handlers: list[LiveHandlerCount]
    db_now: dt.datetime
    #: The paused queues (workers do not claim from them), oldest pause first.
    paused: list[QueuePause] = []

    @property
    def throughput(self) -> float:
        """Events done per second over the window."""
        return sum(t.done_recently for t in self.types) / self.window

    @property
    def oldest_ready_age(self) -> float | None:
        """Seconds the oldest due pending event (of any type) has waited."""
        ages = [t.oldest_ready_age for t in self.types if t.oldest_ready_age is not None]
        return max(ages) if ages else None


async def live_status(
    conn: asyncpg.Connection, *, window: float = 5.0, schema: str = DEFAULT_SCHEMA
) -> LiveStatus:
    """A cheap snapshot for a live view: exact pending / running / dead / discarded /
    cancelled counts per type, events done in the last ``window`` seconds (by
    ``processed_at``), handler states of unfinished events, the oldest ready age and the
    paused queues.

    Unlike :func:`pgqueue.admin.status` it never counts every done event: each part reads a
    partial index, so it costs the same however many done events the table keeps.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    queries = queries_for(schema)
    per_type: dict[str, dict[str, Any]] = {}
    for r in await queries.steer.live_counts(conn, window):
        entry = per_type.setdefault(r["event_type"], {"event_type": r["event_type"]})
        entry["done_recently" if r["state"] == "done" else r["state"]] = r["events"]
        if r["oldest_ready_age"] is not None:
            entry["oldest_ready_age"] = r["oldest_ready_age"]
    handlers = [
        LiveHandlerCount(
            event_type=r["event_type"], handler=r["handler"], state=r["state"], events=r["events"]
        )
        for r in await queries.steer.live_handlers(conn)
    ]
    return LiveStatus(
        window=window,
        types=[LiveTypeCounts(**per_type[t]) for t in sorted(per_type)],
        handlers=handlers,
        db_now=await database_now(conn),
        paused=await list_paused(conn, schema=schema),
    )


class BlockedKey(_Frozen):
    """An ordering key held back: its oldest unfinished event is dead, or waits out a
    failure's retry, while later events of the key wait behind it (docs/ordering.md).
    ``retry`` or ``discard`` of ``event_id`` releases the key."""

    ordering_key: str
    event_id: int
    event_type: str
    state: EventState
    waiting: int
    last_error: str | None


async def blocked_keys(
    conn: asyncpg.Connection, *, limit: int = 100, schema: str = DEFAULT_SCHEMA
) -> list[BlockedKey]:
    """The held-back ordering keys, oldest blocking event first (at most ``limit``)."""
    rows = await queries_for(schema).ordering.blocked_keys(conn, limit)
    return [
        BlockedKey(
            ordering_key=r["ordering_key"],
            event_id=r["id"],
            event_type=r["event_type"],
            state=EventState(r["state"]),
            waiting=r["waiting"],
            last_error=r["last_error"],
        )
        for r in rows
    ]
