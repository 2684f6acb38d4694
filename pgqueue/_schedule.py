"""Periodic (cron) events: a schedule's definition and its tick arithmetic, and what
operators see of a stored schedule. The worker's service that emits the ticks is
``_scheduler.Scheduler``.

Cron arithmetic is cronsim's (https://github.com/cuu508/cronsim): maintained (it runs the
schedules of Healthchecks.io), typed, no dependencies, matches Debian cron including its
behaviour across DST changes, and takes an optional seconds field and reverse iteration,
which is how "the latest tick not after now" is found. croniter was the usual choice, but
its maintainer announced its end in 2024 (it has since moved to new hands); cronsim was the
steadier pick.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cronsim import CronSim, CronSimError

from ._errors import RegistryError
from ._models import PRIORITY_MAX, PRIORITY_MIN
from ._names import (
    EVENT_TYPE_RULE,
    QUEUE_RULE,
    SCHEDULE_NAME_RULE,
    event_type_ok,
    queue_ok,
    schedule_name_ok,
)

log = logging.getLogger("pgqueue.scheduler")

# The payload key that carries the tick (ISO 8601, UTC) into the event.
TICK_KEY = "tick"


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
