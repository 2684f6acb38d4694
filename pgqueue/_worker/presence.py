"""Worker presence: each worker keeps a row in ``workers`` while it runs, so operators can see
which processes are alive (``pgqueue workers``, the dashboard's Workers page).

The row is written when the worker starts and renewed at every heartbeat with the number of
events in flight; a worker that stops deletes it. A killed worker cannot, so every row carries
a lease like an event's: past ``expires_at`` (last heartbeat + ``lease_seconds``) the worker is
taken for dead and no longer listed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable
from importlib import metadata
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict

from .._backoff import describe_error
from .._queries import queries_for
from .._settings import DEFAULT_SCHEMA, WorkerSettings
from .loop import run_with_backoff

log = logging.getLogger("pgqueue.worker")


def package_version() -> str:
    """pgqueue's installed version ('unknown' from a bare source tree)."""
    try:
        return metadata.version("pgqueue")
    except metadata.PackageNotFoundError:
        return "unknown"


class WorkerInfo(BaseModel):
    """One live worker process, as of its last heartbeat."""

    model_config = ConfigDict(frozen=True)

    worker_id: str
    host: str
    pid: int
    version: str
    queues: list[str]
    event_types: list[str]
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    #: Past this (last heartbeat + the worker's lease) the worker is taken for dead.
    expires_at: dt.datetime
    #: Events claimed and not yet recorded, as of the last heartbeat.
    in_flight: int
    #: The database clock when the row was read (for ages).
    db_now: dt.datetime


async def list_workers(
    conn: asyncpg.Connection, *, schema: str = DEFAULT_SCHEMA
) -> list[WorkerInfo]:
    """The worker processes alive now (their lease has not expired), oldest first."""
    rows = await queries_for(schema).presence.alive(conn)
    return [WorkerInfo(**dict(r)) for r in rows]


class Presence:
    """The worker's presence row: announced at start, renewed every heartbeat, deleted at
    stop. A failed write is logged and tried again at the next beat: presence is for people
    to look at, and never stops the worker."""

    name = "presence"

    def __init__(
        self,
        *,
        pool: Any,
        settings: WorkerSettings,
        worker_id: str,
        event_types: list[str],
        in_flight: Callable[[], int],
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._worker_id = worker_id
        self._event_types = event_types
        self._in_flight = in_flight
        self._queries = queries_for(settings.schema_name).presence
        self._host = socket.gethostname()
        self._version = package_version()

    async def beat(self) -> None:
        """Write the row once (insert or renew)."""
        async with self._pool.acquire() as conn:
            await self._queries.announce(
                conn,
                self._worker_id,
                self._host,
                os.getpid(),
                self._version,
                list(self._settings.queues),
                self._event_types,
                self._settings.lease_seconds,
                self._in_flight(),
            )

    async def run(self) -> None:
        """Renew the row every heartbeat interval until cancelled."""
        interval = self._settings.heartbeat_interval

        async def beat() -> float:
            await self.beat()
            return interval

        await run_with_backoff(beat, "renewing worker presence", cap=interval)

    async def leave(self) -> None:
        """Delete the row (best effort: if it fails, the row expires with its lease)."""
        try:
            async with self._pool.acquire() as conn:
                await asyncio.wait_for(self._queries.leave(conn, self._worker_id), timeout=5)
        except Exception as exc:
            log.warning(
                "worker presence not removed (%s); it expires with its lease",
                describe_error(exc),
                extra={"error": describe_error(exc)},
            )
