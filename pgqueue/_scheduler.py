"""Periodic (cron) events: a schedule's definition and tick arithmetic, and the worker task
that emits the ticks.

Cron arithmetic is cronsim's (https://github.com/cuu508/cronsim): maintained (it runs the
schedules of Healthchecks.io), typed, no dependencies, matches Debian cron including its
behaviour across DST changes, and takes an optional seconds field and reverse iteration,
which is how "the latest tick not after now" is found. croniter was the usual choice, but
its maintainer announced its end in 2024 (it has since moved to new hands); cronsim was the
steadier pick.

Exactly once: every worker serving a registry with schedules runs a :class:`Scheduler`; a
tick is emitted by a conditional UPDATE of the schedule's ``last_tick`` and the INSERT of the
event in one statement (``EMIT_TICK`` in ``_queries/schedule.py``), so of many racing workers
one wins. After downtime only the LATEST missed tick is emitted (like cron, River and Oban: a
report that missed three hours runs once, for the latest hour; the tick is in its payload).
Time is the database clock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from cronsim import CronSim, CronSimError

from ._backoff import is_transient
from ._errors import ConfigurationError, RegistryError
from ._loop import run_with_backoff
from ._models import PRIORITY_MAX, PRIORITY_MIN
from ._names import (
    EVENT_TYPE_RULE,
    QUEUE_RULE,
    SCHEDULE_NAME_RULE,
    event_type_ok,
    queue_ok,
    schedule_name_ok,
)
from ._queries import ScheduleQueries, database_now, queries_for

log = logging.getLogger("pgqueue.scheduler")

# The payload key that carries the tick (ISO 8601, UTC) into the event.
TICK_KEY = "tick"
# Sleep at most this long between looks at the clock, so a worker whose clock drifts from the
# database's, or a suspended VM, is late by at most this much.
MAX_SLEEP = 30.0


@dataclass(frozen=True)
class Schedule:
    """A cron expression that emits ``event_type`` events, validated when it is built.

    ``expression`` has 5 fields (minute hour day month weekday) or 6 (seconds first), and is
    read in ``timezone`` (an IANA name). Each event's payload is ``payload`` plus ``"tick"``:
    the tick it stands for, ISO 8601 in UTC.
    """

    name: str
    expression: str
    event_type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    queue: str = "default"
    priority: int = 0

    def __post_init__(self) -> None:
        where = f"schedule {self.name!r}"
        if not schedule_name_ok(self.name):
            raise RegistryError(f"schedule name {self.name!r} must be {SCHEDULE_NAME_RULE}")
        if not event_type_ok(self.event_type):
            raise RegistryError(
                f"{where}: event type {self.event_type!r} must be {EVENT_TYPE_RULE}"
            )
        if not queue_ok(self.queue):
            raise RegistryError(f"{where}: invalid queue name {self.queue!r}: use {QUEUE_RULE}")
        if not PRIORITY_MIN <= self.priority <= PRIORITY_MAX:
            raise RegistryError(f"{where}: priority must be within {PRIORITY_MIN}..{PRIORITY_MAX}")
        if TICK_KEY in self.payload:
            raise RegistryError(f"{where}: the payload key {TICK_KEY!r} is reserved for the tick")
        try:
            json.dumps(dict(self.payload), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{where}: payload is not JSON-serialisable: {exc}") from None
        self.zone()  # raises on a bad time zone
        try:
            CronSim(self.expression, dt.datetime.now(dt.UTC))
        except (CronSimError, ValueError) as exc:
            raise RegistryError(
                f"{where}: invalid cron expression {self.expression!r} ({exc}); use 5 fields "
                "'minute hour day month weekday' (e.g. '*/5 * * * *') or 6 with seconds first"
            ) from None

    def zone(self) -> zoneinfo.ZoneInfo:
        """The schedule's time zone."""
        try:
            return zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise RegistryError(
                f"schedule {self.name!r}: unknown time zone {self.timezone!r}; use an IANA "
                "name such as 'UTC' or 'Europe/Paris'"
            ) from None

    def latest_tick(self, now: dt.datetime) -> dt.datetime | None:
        """The latest tick not after ``now`` (UTC), or None when there is none."""
        # Ticks are whole seconds; cronsim's reverse iteration from a time with microseconds
        # yields ticks <= that time with the microseconds dropped, so +1 us gives "<= now".
        start = now.astimezone(self.zone()).replace(microsecond=0) + dt.timedelta(microseconds=1)
        try:
            return next(CronSim(self.expression, start, reverse=True)).astimezone(dt.UTC)
        except StopIteration:
            return None

    def next_tick(self, now: dt.datetime) -> dt.datetime | None:
        """The first tick after ``now`` (UTC), or None when there is none."""
        try:
            return next(CronSim(self.expression, now.astimezone(self.zone()))).astimezone(dt.UTC)
        except StopIteration:
            return None


class Scheduler:
    """The worker task that registers ``schedules`` and emits their ticks until cancelled."""

    name = "scheduler"

    def __init__(self, pool: asyncpg.Pool, schema: str, schedules: Sequence[Schedule]) -> None:
        self._pool = pool
        self._queries: ScheduleQueries = queries_for(schema).schedule
        self._schedules = list(schedules)
        # Per schedule, the last tick this worker emitted or saw taken: saves an UPDATE per
        # schedule per loop; the database still decides who emits.
        self._seen: dict[str, dt.datetime] = {}
        self._synced = False

    async def run(self) -> None:
        """Emit due ticks until cancelled (registering the schedules first, unless
        :meth:`sync` already did); an error no retry cures stops the worker."""
        await run_with_backoff(
            self._sync_and_step,
            "emitting scheduled events",
            fatal=lambda exc: not is_transient(exc),
            logger=log,
        )

    async def _sync_and_step(self) -> float:
        if not self._synced:
            await self.sync()
        return await self._step()

    async def sync(self) -> None:
        """Create or update this registry's schedules in the database."""
        try:
            await self._upsert_all()
        except asyncpg.InsufficientPrivilegeError as exc:
            raise ConfigurationError(
                f"this worker's database role may not keep the schedules ({exc}); grant it "
                "pgqueue_worker (see 'pgqueue roles') or SELECT, INSERT, UPDATE on the "
                "schema's schedules table"
            ) from None
        self._synced = True

    async def _upsert_all(self) -> None:
        async with self._pool.acquire() as conn:
            for s in self._schedules:
                row = await self._queries.upsert_schedule(
                    conn,
                    s.name,
                    s.expression,
                    s.timezone,
                    s.event_type,
                    json.dumps(dict(s.payload)),
                    s.queue,
                    s.priority,
                )
                old = (row["old_expression"], row["old_timezone"])
                if old[0] is None:
                    log.info("schedule %s created: %r %s", s.name, s.expression, s.timezone)
                elif old != (s.expression, s.timezone):
                    log.info(
                        "schedule %s changed from %r %s to %r %s: it restarts from now",
                        s.name, old[0], old[1], s.expression, s.timezone,
                    )  # fmt: skip
                self._seen[s.name] = row["last_tick"]

    async def _step(self) -> float:
        """Emit every due tick; return the seconds to sleep until the next one."""
        async with self._pool.acquire() as conn:
            now = await database_now(conn)
            started = time.monotonic()
            for s in self._schedules:
                tick, seen = s.latest_tick(now), self._seen.get(s.name)
                if tick is None or (seen is not None and tick <= seen):
                    continue
                event_id = await self._queries.emit_tick(
                    conn, s.name, tick, s.expression, s.timezone
                )
                self._seen[s.name] = tick
                if event_id is not None:
                    log.info("schedule %s: tick %s emitted as event %d", s.name, tick, event_id)
        upcoming = [t for s in self._schedules if (t := s.next_tick(now)) is not None]
        if not upcoming:
            return MAX_SLEEP
        wait = (min(upcoming) - now).total_seconds() - (time.monotonic() - started)
        # A few ms past the tick: waking a hair early (clock granularity) would find nothing due.
        return min(max(wait, 0.0) + 0.005, MAX_SLEEP)


# A tick not emitted this long after it was due means no running worker serves the schedule
# (a worker emits within milliseconds; a restart takes seconds).
LATE_AFTER = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class ScheduleStatus:
    """A stored schedule as operators see it (``pgqueue schedules``, the dashboard)."""

    name: str
    expression: str
    timezone: str
    event_type: str
    last_tick: dt.datetime
    #: None when the stored definition is invalid (see ``valid``).
    next_tick: dt.datetime | None
    synced_at: dt.datetime
    valid: bool
    #: A tick is overdue by more than LATE_AFTER: no running worker serves the schedule?
    late: bool


def schedule_status(row: Mapping[str, Any]) -> ScheduleStatus:
    """The next tick and lateness of one ``schedules`` row (read with ``db_now``)."""
    now: dt.datetime = row["db_now"]
    try:
        schedule = Schedule(
            name=row["name"],
            expression=row["expression"],
            event_type=row["event_type"],
            timezone=row["timezone"],
        )
    except RegistryError:
        next_tick, valid, late = None, False, False
    else:
        next_tick, valid = schedule.next_tick(now), True
        due = schedule.latest_tick(now)
        late = due is not None and due > row["last_tick"] and now - due > LATE_AFTER
    return ScheduleStatus(
        name=row["name"],
        expression=row["expression"],
        timezone=row["timezone"],
        event_type=row["event_type"],
        last_tick=row["last_tick"],
        next_tick=next_tick,
        synced_at=row["synced_at"],
        valid=valid,
        late=late,
    )
