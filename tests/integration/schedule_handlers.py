"""Registries with schedules, served by worker processes in tests/integration/test_schedule.py.

``registry``: the handler ``every_second`` runs at every second (a 6-field cron expression)
and inserts (tick, its process id, event id) into the test's own ``cron_runs`` table.
``bad_registry`` is built by importing ``schedule_bad_handlers`` instead.
"""

from __future__ import annotations

import datetime as dt
import os

from pydantic import BaseModel

import pgqueue

registry = pgqueue.Registry()


class Tick(BaseModel):
    """The payload of a periodic event."""

    tick: dt.datetime


@registry.periodic("* * * * * *")
async def every_second(payload: Tick, ctx: pgqueue.Context) -> None:
    """Record which tick ran, where."""
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO cron_runs (tick, pid, event_id) VALUES ($1, $2, $3)",
            payload.tick,
            os.getpid(),
            ctx.event_id,
        )
