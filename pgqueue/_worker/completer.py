"""Recording outcomes: one statement per flush, fenced by lease token.

While one flush runs the next batch accumulates, so batches grow with load and latency stays
low when idle. A flush that fails is retried for ever (with backoff): a completer that gave up
would leave events running while the heartbeat keeps their leases alive.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._models import WorkerStats
from .._queries import Queries
from .dispatch import Completion, Delivery
from .loop import run_with_backoff

if TYPE_CHECKING:
    from .._metrics import Metrics

log = logging.getLogger("pgqueue.worker")


class Completer:
    """Buffers finished events and writes them in batches."""

    name = "completer"

    def __init__(
        self,
        *,
        pool: Any,
        queries: Queries,
        inflight: dict[int, Delivery],
        stats: WorkerStats,
        on_progress: Callable[[], None],
        after_error: Callable[[BaseException], Awaitable[None]],
        observer: Metrics | None = None,
    ) -> None:
        self.buffer: list[Completion] = []
        self._pool = pool
        self._queries = queries
        self._inflight = inflight
        self._stats = stats
        self._on_progress = on_progress
        self._after_error = after_error
        self._flush = asyncio.Event()
        self._observer = observer

    def add(self, completion: Completion) -> None:
        """Queue one event's outcome for the next flush."""
        self.buffer.append(completion)
        self._flush.set()

    async def run(self) -> None:
        """Write outcomes as they come, one flush at a time, until cancelled."""
        while True:
            await self._flush.wait()
            self._flush.clear()
            await self.write_all()

    async def write_all(self) -> None:
        """Write the buffer until it is empty. Never give up on recorded outcomes: a dead
        completer would leave events running for ever while the heartbeat keeps their leases
        alive."""
        await run_with_backoff(self._write_some, "recording outcomes", on_error=self._after_error)

    async def _write_some(self) -> float | None:
        """Write what the buffer holds now; None once it is empty, 0 for more."""
        if not self.buffer:
            return None
        batch, self.buffer = self.buffer, []
        try:
            await self._write(batch)
        except BaseException:
            self.buffer[:0] = batch  # written at the next try, before anything newer
            raise
        return 0.0

    async def _write(self, batch: list[Completion]) -> None:
        happy = [c for c in batch if c.happy]
        # A cancelled event's row was written by the cancel itself (pgqueue/_cancel.py).
        other = [c for c in batch if not c.happy and c.state != "cancelled"]
        written: list[int] = []
        async with self._pool.acquire() as conn:
            by_token: dict[uuid.UUID, list[int]] = {}
            for c in happy:
                by_token.setdefault(c.token, []).append(c.id)
            for token, ids in by_token.items():
                written += await self._queries.core.complete_done(conn, ids, token)
            if other:
                written += await self._queries.core.complete(
                    conn,
                    [c.id for c in other],
                    [c.token for c in other],
                    [c.state for c in other],
                    [c.delay for c in other],
                    [c.refund for c in other],
                    [c.handlers for c in other],
                    [c.error for c in other],
                )
        self._account(batch, set(written))

    def _account(self, batch: list[Completion], written: set[int]) -> None:
        stats, observer = self._stats, self._observer
        inflight = self._inflight
        for c in batch:
            delivery = inflight.get(c.id)
            # Only this claim's own entry: after a lost lease this worker may have claimed the
            # event again (a new token) while the old run was still going. Popping that newer
            # claim's entry stopped its heartbeat, so it lost its lease too, and so on.
            if delivery is not None and delivery.token == c.token:
                del inflight[c.id]
            if c.state == "cancelled":
                stats.cancelled += 1
                outcome = "cancelled"
            elif c.id not in written:
                stats.lost_leases += 1
                outcome = "lease_lost"
                log.warning(
                    "event %d: lease lost before its outcome was recorded; another "
                    "worker owns it now, outcome discarded",
                    c.id,
                    extra={"event_id": c.id},
                )
            elif c.state == "done":
                stats.done += 1
                outcome = "done"
            elif c.state in ("dead", "discarded"):  # discarded: a handler an operator gave up on
                stats.dead += 1
                outcome = "dead"
            elif c.deferred:
                stats.deferred += 1
                outcome = "deferred"
            elif c.refund:
                stats.handed_back += 1
                outcome = "handed_back"
            else:
                stats.retried += 1
                outcome = "retry"
            if observer is not None and delivery is not None:
                observer.event_recorded(delivery.row.event_type, outcome)
        self._on_progress()
