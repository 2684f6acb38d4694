"""Keeping leases while a handler blocks the event loop.

An async handler that blocks (``time.sleep``, CPU-bound work) stops every task of its worker,
the heartbeat too. Before this guard, a 40 s block under a 10 s lease lost the leases of every
event the worker held: all were rescued and run again elsewhere, and the blocker, rescued onto
the next worker, stalled that one too (about 25 s with no progress across the fleet; the dead
event then said only "the last one never finished").

The guard is a thread. The worker's loop ticks it every ``interval`` seconds; when the ticks
stop for two intervals, the thread renews the leases of the events in flight through a
connection of its own (opened at the first stall, so a healthy worker pays nothing). It does so
for at most ``grace`` seconds of stall: a loop stuck for longer (a handler in an endless loop)
is a dead worker, and its leases expire as before. Once the loop runs again, the handler that
blocked it is past its timeout: the runner records that attempt as failed, naming the stall
(``_runner.LoopBlocked``), so the event ends dead with its real cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from .._backoff import describe_error
from .._db import connect
from .._queries import Queries
from .dispatch import Delivery

log = logging.getLogger("pgqueue.worker")


class StallGuard:
    """Renews the worker's leases from a thread while its event loop is blocked."""

    name = "stall guard"

    def __init__(
        self,
        *,
        dsn: str,
        connect_options: dict[str, Any],
        queries: Queries,
        inflight: dict[int, Delivery],
        lease_seconds: float,
        interval: float,
        grace: float,
    ) -> None:
        self._dsn = dsn
        self._options = connect_options
        self._queries = queries
        self._inflight = inflight
        self._lease = lease_seconds
        self._interval = interval
        self._grace = grace
        self._last_tick = time.monotonic()
        self._stop = threading.Event()

    async def run(self) -> None:
        """Tick from the worker's loop, with the guard thread running, until cancelled."""
        thread = threading.Thread(target=self._guard, name="pgqueue-stall-guard", daemon=True)
        thread.start()
        try:
            while True:
                self._last_tick = time.monotonic()
                await asyncio.sleep(self._interval / 2)
        finally:
            self._stop.set()
            await asyncio.to_thread(thread.join)

    def _guard(self) -> None:
        loop = asyncio.new_event_loop()
        conn: Any = None
        try:
            while not self._stop.wait(self._interval):
                stalled = time.monotonic() - self._last_tick
                if not 2 * self._interval <= stalled <= self._grace:
                    continue
                # A copy made in C under the GIL: the blocked loop does not change it meanwhile.
                held = list(self._inflight.copy().values())
                if not held:
                    continue
                try:
                    if conn is None:
                        conn = loop.run_until_complete(connect(self._dsn, **self._options))
                    loop.run_until_complete(
                        self._queries.core.heartbeat(
                            conn, [d.row.id for d in held], [d.token for d in held], self._lease
                        )
                    )
                except Exception as exc:  # the next round tries again, on a new connection
                    log.warning("stall guard: lease renewal failed (%s)", describe_error(exc))
                    conn = self._drop(loop, conn)
                    continue
                log.warning(
                    "event loop blocked for %.1fs: leases of %d event(s) renewed from the "
                    "stall guard",
                    stalled,
                    len(held),
                    extra={"stall_seconds": round(stalled, 3), "count": len(held)},
                )
        finally:
            self._drop(loop, conn)
            loop.close()

    @staticmethod
    def _drop(loop: asyncio.AbstractEventLoop, conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(conn.close(), 5))
        return None
