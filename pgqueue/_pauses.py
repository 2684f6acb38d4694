"""Paused queues, the operator side: pause and resume a queue, list the paused ones.

A pause is a row in ``queue_pauses`` (sql/0015_pause.sql). Each worker reads the rows of its
own queues once per poll interval (``_worker/pauses.py``), so a pause takes effect within a
poll interval and costs no statement on the claim path; events already running finish, and
producers keep enqueueing (their events wait as pending). A resume is seen within a poll
interval too, and the worker then claims at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import asyncpg

from ._errors import ConfigurationError
from ._names import QUEUE_RULE, queue_ok
from ._queries import queries_for
from ._settings import DEFAULT_SCHEMA

log = logging.getLogger("pgqueue.worker")

MAX_REASON = 500
MAX_WHO = 200


@dataclass(frozen=True)
class QueuePause:
    """A paused queue: since when, by whom, and why."""

    queue: str
    paused_at: dt.datetime
    paused_by: str
    reason: str | None


def _check_queue(queue: str) -> None:
    if not queue_ok(queue):
        raise ConfigurationError(f"{queue!r} is not a queue name: {QUEUE_RULE}")


async def pause_queue(
    conn: asyncpg.Connection,
    queue: str,
    *,
    who: str | None = None,
    reason: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> bool:
    """Pause ``queue``: workers stop claiming from it within their poll interval; events
    already running finish. Return False when it was paused already (nothing changes).
    ``who`` (default: the database user) and ``reason`` are kept for ``status``."""
    _check_queue(queue)
    if who is not None and not 1 <= len(who) <= MAX_WHO:
        raise ConfigurationError(f"who paused the queue: 1 to {MAX_WHO} characters")
    text = reason.strip()[:MAX_REASON] if reason and reason.strip() else None
    name = who if who is not None else await conn.fetchval("SELECT current_user")
    return await queries_for(schema).flow.pause(conn, queue, name, text)


async def resume_queue(
    conn: asyncpg.Connection, queue: str, *, schema: str = DEFAULT_SCHEMA
) -> bool:
    """Resume ``queue``; return False when it was not paused. Its workers see it within
    their poll interval and claim its backlog then."""
    _check_queue(queue)
    return await queries_for(schema).flow.resume(conn, queue)


async def list_paused(
    conn: asyncpg.Connection, *, schema: str = DEFAULT_SCHEMA
) -> list[QueuePause]:
    """Every paused queue, by name."""
    rows = await queries_for(schema).flow.list_pauses(conn)
    return [QueuePause(**dict(r)) for r in rows]
