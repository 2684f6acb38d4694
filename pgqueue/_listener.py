"""The LISTEN side of the worker: one dedicated connection that turns NOTIFY into a wake-up.

NOTIFY is a latency hint, never the source of truth: when the connection drops, the listener
reconnects with backoff and wakes the claimer at once, because notifications sent while it was
down are gone. The claimer polls anyway, so a lost notification costs at most one poll
interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from ._backoff import reconnect_delay
from ._db import connect, warn_if_pooler

log = logging.getLogger("pgqueue.worker")
LISTEN_THROUGH_POOLER = (
    "if it pools by transaction, LISTEN there receives no notification and events wait for "
    "the poll interval; give --listen-dsn a direct connection to PostgreSQL"
)


class Listener:
    """Keeps a LISTEN connection open and calls ``wake`` on every relevant notification."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        queues: tuple[str, ...],
        wake: Callable[[], None],
        *,
        probe_interval: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._queues = frozenset(queues)
        self._wake = wake
        self._probe_interval = probe_interval
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._checked = False
        self.reconnects = 0

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if not payload or payload in self._queues:
            self._wake()

    def _on_terminate(self, _conn: Any) -> None:
        self._lost.set()

    async def _open(self) -> None:
        conn = await connect(self._dsn)
        self._conn = conn
        if not self._checked:  # once per run: the DSN does not change
            await warn_if_pooler(conn, self._dsn, LISTEN_THROUGH_POOLER)
            self._checked = True
        conn.add_termination_listener(self._on_terminate)
        await conn.add_listener(self._channel, self._on_notify)
        self._lost.clear()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        failures = 0
        try:
            while True:
                try:
                    await self._open()
                    if failures or self.reconnects:
                        log.info("listener reconnected; catching up")
                    failures = 0
                    # Whatever was notified while we were away is lost: fetch now.
                    self._wake()
                    await self._watch()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    delay = reconnect_delay(failures)
                    log.warning(
                        "listener connection lost (%s); reconnecting in %.1fs",
                        type(exc).__name__,
                        delay,
                        extra={"error": type(exc).__name__, "delay": delay},
                    )
                    await self._close()
                    await asyncio.sleep(delay)
                self.reconnects += 1
        finally:
            await self._close()

    async def _watch(self) -> None:
        """Return (by raising) when the connection dies; probe it so a silent death shows."""
        assert self._conn is not None
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._probe_interval)
            except TimeoutError:
                # A half-open TCP connection never reports termination: a round trip does.
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=5.0)
                continue
            raise ConnectionError("listener connection terminated")

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except Exception:
                conn.terminate()
