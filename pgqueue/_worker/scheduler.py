"""The worker's service that registers a registry's schedules and emits their ticks.

Exactly once: every worker serving a registry with schedules runs a :class:`Scheduler`; a
tick is emitted by a conditional UPDATE of the schedule's ``last_tick`` and the INSERT of the
event in one statement (``EMIT_TICK`` in ``_queries/schedule.py``), so of many racing workers
one wins. After downtime only the LATEST missed tick is emitted (like cron, River and Oban: a
report that missed three hours runs once, for the latest hour; the tick is in its payload).
Time is the database clock. The schedule itself and its arithmetic are ``_schedule.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence

import asyncpg

from .._backoff import is_transient
from .._errors import ConfigurationError
from .._queries import ScheduleQueries, database_now, queries_for
from .._schedule import Schedule
from .loop import run_with_backoff

log = logging.getLogger("pgqueue.scheduler")

# Sleep at most this long between looks at the clock, so a worker whose clock drifts from the
# database's, or a suspended VM, is late by at most this much.
MAX_SLEEP = 30.0


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
