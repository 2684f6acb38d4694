"""The read-only views. Each reads through the library functions the CLI uses (list_events,
get_event, list_limits, list_workers, the schedules' rows) or, where the CLI has no view, a
bounded statement of ``_queries/dashboard.py``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from .._errors import ConfigurationError
from .._inspect import blocked_keys, get_event, list_events
from .._models import EventState, HandlerState
from .._names import MAX_EVENT_ID
from .._parse import parse_time_bound
from .._pauses import list_paused
from .._queries import database_now, queries_for
from .._schedule import schedule_status
from .._settings import validate_queue
from .._worker.limits import list_limits
from .._worker.presence import list_workers
from ._chart import backlog_line, chart_svg, minute_counts
from ._context import Dashboard

# Events counted per minute of the chart before the rest of the minute is estimated from the
# time they covered: 60 x 2,000 index entries took 160 ms at 1,763 events a minute (bench).

CHART_CAP = 250
# Dead events the grouping reads (newest first); the per-type totals stay exact.
DEAD_GROUP_ROWS = 1000
MAX_PAGE = 500


@dataclass
class QueueTypeRow:
    """One line of the overview."""

    queue: str
    event_type: str
    pending: int = 0
    running: int = 0
    dead: int = 0
    done_last_minute: int = 0
    oldest_ready_age: float | None = None


# The overview lists this many held-back ordering keys, oldest first (`pgqueue status` and
# `events list --blocked` show more).
HELD_BACK_SHOWN = 20


async def overview(dash: Dashboard, request: Request) -> Response:
    """Per queue and type: pending, running, dead, done in the last minute, oldest ready age;
    the chart; how many workers are alive; paused queues and held-back ordering keys."""
    queries = queries_for(dash.settings.schema).dashboard
    pool = await dash.pool()
    async with pool.acquire() as conn:
        counts = await queries.overview_counts(conn)
        minutes = await queries.throughput(conn, CHART_CAP)
        first_ids, next_id = await _created_ids(dash, conn, [r["start"] for r in minutes])
        paused = await list_paused(conn, schema=dash.settings.schema)
        # Reads only failed keyed events (outbox_ordering_failed_idx): nothing on a healthy queue.
        held = await blocked_keys(conn, limit=HELD_BACK_SHOWN + 1, schema=dash.settings.schema)
        workers = await list_workers(conn, schema=dash.settings.schema)
        now: dt.datetime = await database_now(conn)
    rows: dict[tuple[str, str], QueueTypeRow] = {}
    for r in counts:
        row = rows.setdefault(
            (r["queue"], r["event_type"]), QueueTypeRow(r["queue"], r["event_type"])
        )
        field_name = "done_last_minute" if r["state"] == "done" else r["state"]
        setattr(row, field_name, r["events"])
        if r["oldest_ready_age"] is not None:
            row.oldest_ready_age = r["oldest_ready_age"]
    table = [rows[k] for k in sorted(rows)]
    pending = sum(r.pending for r in table)
    per_minute = minute_counts(minutes, CHART_CAP)
    running = sum(r.running for r in table)
    backlog = backlog_line(per_minute, first_ids, next_id, pending + running, now)
    ages = [r.oldest_ready_age for r in table if r.oldest_ready_age is not None]
    return dash.render(
        request,
        "overview.html",
        page="overview",
        rows=table,
        totals=QueueTypeRow(
            "all",
            "all",
            pending,
            running,
            sum(r.dead for r in table),
            sum(r.done_last_minute for r in table),
            max(ages) if ages else None,
        ),
        chart=chart_svg(per_minute, backlog, now),
        queues=sorted({r.queue for r in table} | {p.queue for p in paused}),
        request_notice=request.query_params.get("notice", "")[:200],
        paused={p.queue: p for p in paused},
        held_back=held[:HELD_BACK_SHOWN],
        more_held_back=len(held) > HELD_BACK_SHOWN,
        done_last_hour=sum(m.events for m in per_minute),
        estimated=any(m.estimated for m in per_minute),
        chart_cap=CHART_CAP,
        workers=len(workers),
        in_flight=sum(w.in_flight for w in workers),
        now=now,
    )


async def _created_ids(
    dash: Dashboard, conn: Any, starts: list[dt.datetime]
) -> tuple[list[int | None], int]:
    """The first id created in each minute of ``starts``, and the next id: the boundaries of
    minutes seen before come from ``dash.created_ids``, the others from CREATED_BOUNDS, each
    searched from the newest known boundary before it."""
    known = dash.created_ids
    missing = [s for s in starts if s not in known]
    before = [known[s] for s in starts if s in known and (not missing or s < missing[0])]
    found, next_id = await queries_for(dash.settings.schema).dashboard.created_bounds(
        conn, missing, max(before, default=1)
    )
    known.update(found)
    for old in [s for s in known if not starts or s < starts[0]]:
        del known[old]
    return [known.get(s) for s in starts], next_id


@dataclass
class EventFilters:
    """The filters of the events list, as `pgqueue events list` takes them."""

    types: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    handler: str | None = None
    handler_state: str | None = None
    since: str | None = None
    until: str | None = None
    key: str | None = None
    queues: list[str] = field(default_factory=list)
    before_id: int | None = None
    limit: int = 50

    @classmethod
    def parse(cls, params: QueryParams) -> EventFilters:
        """From the query string; a bad value raises a one-line error."""

        def text(name: str) -> str | None:
            value = params.get(name, "").strip()
            return value or None

        def listed(name: str) -> list[str]:
            # Repeated (?type=a&type=b) or comma-separated: names never contain commas.
            return [v.strip() for raw in params.getlist(name) for v in raw.split(",") if v.strip()]

        states = listed("state")
        for state in states:
            EventState(state)  # ValueError names the bad state
        handler_state = text("handler_state")
        if handler_state is not None:
            HandlerState(handler_state)
        queues = listed("queue")
        for queue in queues:
            validate_queue(queue)
        before = text("before_id")
        limit = text("limit")
        try:
            before_id = int(before) if before is not None else None
            page = int(limit) if limit is not None else 50
        except ValueError:
            raise ConfigurationError("before_id and limit must be whole numbers") from None
        if before_id is not None and not 1 <= before_id <= MAX_EVENT_ID:
            raise ConfigurationError(f"before_id must be between 1 and {MAX_EVENT_ID}")
        if not 1 <= page <= MAX_PAGE:
            raise ConfigurationError(f"limit must be between 1 and {MAX_PAGE}")
        return cls(
            types=listed("type"),
            states=states,
            handler=text("handler"),
            handler_state=handler_state,
            since=text("since"),
            until=text("until"),
            key=text("key"),
            queues=queues,
            before_id=before_id,
            limit=page,
        )

    def list_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pgqueue.admin.list_events`."""
        return {
            "event_types": self.types,
            "states": self.states,
            "handler": self.handler,
            "handler_state": self.handler_state,
            "since": parse_time_bound(self.since) if self.since else None,
            "until": parse_time_bound(self.until) if self.until else None,
            "idempotency_key": self.key,
            "queues": self.queues,
            "before_id": self.before_id,
            "limit": self.limit,
        }

    def query(self, **changes: Any) -> str:
        """This filter as a query string, with ``changes`` applied (None drops a key)."""
        values: dict[str, Any] = {
            "type": self.types,
            "state": self.states,
            "handler": self.handler,
            "handler_state": self.handler_state,
            "since": self.since,
            "until": self.until,
            "key": self.key,
            "queue": self.queues,
            "before_id": self.before_id,
            "limit": self.limit if self.limit != 50 else None,
        }
        values.update(changes)
        pairs = []
        for name, value in values.items():
            for item in value if isinstance(value, list) else [value]:
                if item is not None and item != "":
                    pairs.append((name, str(item)))
        return urlencode(pairs)

    @property
    def dead_selection(self) -> dict[str, Any] | None:
        """The retry / discard filters equal to this list's, when they can express it (one
        type or none; no queue or key filter); else None."""
        if len(self.types) > 1 or self.queues or self.key or self.states != ["dead"]:
            return None
        if self.handler_state not in (None, "dead"):
            return None
        return {
            "type": self.types[0] if self.types else "",
            "handler": self.handler or "",
            "since": self.since or "",
            "until": self.until or "",
        }


async def events(dash: Dashboard, request: Request) -> Response:
    """The events list: `pgqueue events list`'s filters and keyset pagination."""
    filters = EventFilters.parse(request.query_params)
    pool = await dash.pool()
    async with pool.acquire() as conn:
        page = await list_events(conn, schema=dash.settings.schema, **filters.list_kwargs())
    return dash.render(
        request,
        "events.html",
        page="events",
        filters=filters,
        events=page.events,
        now=page.db_now,
        next_query=filters.query(before_id=page.next_before_id)
        if page.next_before_id is not None
        else None,
        first_query=filters.query(before_id=None) if filters.before_id is not None else None,
        states=[s.value for s in EventState],
        handler_states=[s.value for s in HandlerState],
        dead_selection=filters.dead_selection,
    )


async def event(dash: Dashboard, request: Request) -> Response:
    """One event: per-handler records, attempts, errors, times, the lease; the payload only
    when the dashboard shows payloads."""
    event_id: int = request.path_params["event_id"]
    if not 1 <= event_id <= MAX_EVENT_ID:
        raise ConfigurationError(f"event ids are between 1 and {MAX_EVENT_ID}")
    pool = await dash.pool()
    async with pool.acquire() as conn:
        detail = await get_event(conn, event_id, schema=dash.settings.schema)
    if detail is None:
        return dash.render(
            request,
            "error.html",
            status=404,
            message=f"no event {event_id} (pruned, or never there); find events in the list",
        )
    payload = None
    if dash.settings.show_payloads:
        payload = json.dumps(detail.payload, indent=2, ensure_ascii=False)
    return dash.render(
        request, "event.html", page="events", event=detail, now=detail.db_now, payload=payload
    )


async def dead(dash: Dashboard, request: Request) -> Response:
    """Dead events grouped by type and dead handler, with the newest error of each group."""
    queries = queries_for(dash.settings.schema).dashboard
    pool = await dash.pool()
    async with pool.acquire() as conn:
        totals = await queries.dead_totals(conn)
        groups = await queries.dead_groups(conn, DEAD_GROUP_ROWS)
    total = sum(totals.values())
    return dash.render(
        request,
        "dead.html",
        page="dead",
        totals=sorted(totals.items()),
        total=total,
        groups=groups,
        sampled=total > DEAD_GROUP_ROWS,
        sample_rows=DEAD_GROUP_ROWS,
    )


async def schedules(dash: Dashboard, request: Request) -> Response:
    """The schedules, next and last tick, late ones flagged (as `pgqueue schedules`)."""
    pool = await dash.pool()
    async with pool.acquire() as conn:
        rows = await queries_for(dash.settings.schema).schedule.list_schedules(conn)
    now = rows[0]["db_now"] if rows else None
    return dash.render(
        request,
        "schedules.html",
        page="schedules",
        schedules=[schedule_status(r) for r in rows],
        now=now,
    )


async def limits(dash: Dashboard, request: Request) -> Response:
    """Concurrency limits: the registry's value, the override, the limit, runs holding a
    slot (as `pgqueue limits`)."""
    pool = await dash.pool()
    async with pool.acquire() as conn:
        found = await list_limits(conn, dash.settings.schema)
    return dash.render(
        request,
        "limits.html",
        page="limits",
        limits=found,
        request_notice=request.query_params.get("notice", "")[:200],
    )


async def workers(dash: Dashboard, request: Request) -> Response:
    """The worker processes alive now (as `pgqueue workers`)."""
    pool = await dash.pool()
    async with pool.acquire() as conn:
        found = await list_workers(conn, schema=dash.settings.schema)
        now = await database_now(conn)
    return dash.render(request, "workers.html", page="workers", workers=found, now=now)


async def replay_form(dash: Dashboard, request: Request) -> Response:
    """The replay form (type, handler, ids, created since / until); it posts to the preview."""
    values: Mapping[str, str] = request.query_params
    return dash.render(
        request,
        "replay.html",
        page="replay",
        values={k: values.get(k, "") for k in ("type", "handler", "ids", "since", "until")},
    )
