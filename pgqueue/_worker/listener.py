"""The LISTEN side of the worker: one dedicated connection that turns NOTIFY into a wake-up.

NOTIFY is a latency hint, never the source of truth: when the connection drops, the listener
reconnects with backoff and wakes the claimer at once, because notifications sent while it was
down are gone. The claimer polls anyway, so a lost notification costs at most one poll
interval.

Producers go through a notify gate at commit (sql/0011_producer_commit.sql): one producer
transaction per queue at a time notifies, the others skip NOTIFY so that their commits do not
queue behind PostgreSQL's notify lock. A skipping producer may finish its commit after the
claim that the gate holder's notification started. So after each such notification (payload:
the queue name) the listener wakes the claimer at once and sweeps: on its own connection it
looks whether skipping producers are still committing (they hold the skippers' advisory lock
in share mode; pg_locks shows them) and waits until they are gone; then it calls ``swept``,
which makes the worker claim again. An event of a skipping producer thus waits
for at most the gate holder's notification plus the end of its own commit, never for the poll
interval. A notification ``<queue>!`` comes from a producer that could not take the skippers'
lock (someone holds it exclusively) and notified for itself: it wakes the claimer at once and
needs no sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from .._db import connect, warn_if_pooler
from .._queries import Queries
from .loop import run_with_backoff
from .wakeups import first

log = logging.getLogger("pgqueue.worker")
LISTEN_THROUGH_POOLER = (
    "if it pools by transaction, LISTEN there receives no notification and events wait for "
    "the poll interval; give --listen-dsn a direct connection to PostgreSQL"
)
# A sweep waits for producers in the middle of their COMMIT (milliseconds), looking again
# after 1, 2, 4, ... ms (at most every 20 ms). One stuck longer (synchronous replication waiting
# for a standby) holds it up to SWEEP_TIMEOUT; then the claimer runs anyway and the listener
# sweeps again.
SWEEP_TIMEOUT = 5.0
SWEEP_POLL_FIRST = 0.001
SWEEP_POLL_MAX = 0.02


class Listener:
    """Keeps a LISTEN connection open and has the worker claim after every notification.

    ``swept(queues)`` is called after each notification for ``queues``, once the producers
    that skipped theirs have committed (see the module docstring); the caller claims them.
    ``wake`` is called after each reconnection (notifications sent meanwhile are lost).
    """

    name = "listener"

    def __init__(
        self,
        *,
        dsn: str,
        queries: Queries,
        queues: tuple[str, ...],
        wake: Callable[[], None],
        swept: Callable[[Sequence[str]], None],
        probe_interval: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._queries = queries
        self._queues = frozenset(queues)
        self._self_notified = {q + "!": q for q in queues}
        self._wake = wake
        self._swept = swept
        self._probe_interval = probe_interval
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._sweep = asyncio.Event()
        self._to_sweep: set[str] = set()
        self._checked = False
        self.reconnects = 0
        self.sweeps = 0

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload in self._queues:
            self._to_sweep.add(payload)
        elif not payload:
            self._to_sweep.update(self._queues)
        elif payload in self._self_notified:
            self._swept((self._self_notified[payload],))
            return
        else:
            return
        # Claim at once (the idle latency: a look at pg_locks first cost a round trip before
        # the claim, p50 5.7 ms against PgQueuer's 7.5 in one run, 2.2 against 6.6 without it
        # in the next, on a loaded machine), then sweep and claim again: a skipper may commit
        # after this claim's snapshot, before the sweep looks.
        self._wake()
        self._sweep.set()

    def _on_terminate(self, _conn: Any) -> None:
        self._lost.set()

    async def _open(self) -> None:
        conn = await connect(self._dsn)
        self._conn = conn
        if not self._checked:  # once per run: the DSN does not change
            await warn_if_pooler(conn, self._dsn, LISTEN_THROUGH_POOLER)
            self._checked = True
        conn.add_termination_listener(self._on_terminate)
        await conn.add_listener(self._queries.core.channel, self._on_notify)
        self._lost.clear()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        try:
            await run_with_backoff(self._listen, "listening", on_error=self._lost_connection)
        finally:
            await self._close()

    async def _listen(self) -> float:
        """Connect, catch up, and listen until the connection dies (by raising)."""
        await self._open()
        if self.reconnects:
            log.info("listener reconnected; catching up")
        # Whatever was notified while we were away is lost: fetch now.
        self._wake()
        await self._watch()
        return 0.0

    async def _lost_connection(self, exc: BaseException) -> None:
        self.reconnects += 1
        await self._close()

    async def _watch(self) -> None:
        """Sweep when asked; return (by raising) when the connection dies, probing it so a
        silent death shows."""
        conn = self._conn
        assert conn is not None
        while True:
            if not (self._lost.is_set() or self._sweep.is_set()):
                await first(self._lost.wait(), self._sweep.wait(), self._probe_interval)
            if self._lost.is_set():
                raise ConnectionError("listener connection terminated")
            if self._sweep.is_set():
                await self._sweep_once(conn)
                continue
            # A half-open TCP connection never reports termination: a round trip does.
            await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5.0)

    async def _sweep_once(self, conn: asyncpg.Connection) -> None:
        """Wait out the producers that skipped their NOTIFY, then have the worker claim."""
        self._sweep.clear()
        queues, self._to_sweep = sorted(self._to_sweep), set()
        committing = await self._queries.core.skippers(conn, queues)
        if committing:
            # Claim again once they have committed (milliseconds: they are inside their
            # COMMIT). Polled, never waited for on the lock itself.
            deadline = time.monotonic() + SWEEP_TIMEOUT
            delay = SWEEP_POLL_FIRST
            while committing:
                if time.monotonic() >= deadline:
                    self._to_sweep.update(queues)  # still committing: look again
                    self._sweep.set()
                    break
                await asyncio.sleep(delay)
                delay = min(2 * delay, SWEEP_POLL_MAX)
                committing = await self._queries.core.skippers(conn, queues, committing)
        self.sweeps += 1
        self._swept(queues)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except Exception:
                conn.terminate()
