"""Keeping leases: the heartbeat renews ours, the rescuer frees those of dead workers, and a
watchdog reports handlers that block the event loop (which would stop the heartbeat)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .._models import WorkerStats
from .._queries import Queries
from .._settings import WorkerSettings
from .dispatch import Delivery
from .loop import run_with_backoff

log = logging.getLogger("pgqueue.worker")


class LeaseKeeper:
    """The worker's lease maintenance: one service running three loops."""

    name = "leases"

    def __init__(
        self,
        *,
        pool: Any,
        queries: Queries,
        settings: WorkerSettings,
        inflight: dict[int, Delivery],
        stats: WorkerStats,
        wake: Callable[[], None],
        renew_slots: Callable[[Any], Awaitable[None]] | None = None,
        cancel_runs: Callable[[], int] | None = None,
    ) -> None:
        self._pool = pool
        self._queries = queries
        self.settings = settings
        self._inflight = inflight
        self.stats = stats
        self._wake = wake
        self._renew_slots = renew_slots  # concurrency slots (pgqueue/_worker/limits.py), if any
        self._cancel_runs = cancel_runs  # the runners' (pgqueue/_worker/runner.py)

    async def run(self) -> None:
        """Renew leases, rescue expired ones and watch the event loop, until cancelled.

        A failed renewal or rescue is retried sooner than its interval, never later: a dead
        heartbeat loses every lease.
        """
        s = self.settings
        async with asyncio.TaskGroup() as group:
            group.create_task(self._every(s.heartbeat_interval, self._heartbeat, "lease renewal"))
            group.create_task(self._every(s.rescue_interval, self._rescue, "rescue scan"))
            group.create_task(self._watch_loop())

    @staticmethod
    async def _every(interval: float, step: Callable[[], Awaitable[None]], what: str) -> None:
        async def after_interval() -> float:
            await step()
            return interval

        await asyncio.sleep(interval)
        await run_with_backoff(after_interval, what, cap=interval)

    async def _heartbeat(self) -> None:
        held = list(self._inflight.values())
        if not held:
            return
        async with self._pool.acquire() as conn:
            renewed = set(
                await self._queries.core.heartbeat(
                    conn,
                    [d.row.id for d in held],
                    [d.token for d in held],
                    self.settings.lease_seconds,
                )
            )
            if self._renew_slots is not None:
                await self._renew_slots(conn)
            missed = [d.row.id for d in held if d.row.id not in renewed]
            # Only when a renewal missed something (rare): which were cancelled.
            cancelled = await self._queries.flow.cancelled_among(conn, missed) if missed else set()
        self._cancelled([d for d in held if d.row.id in cancelled])
        # An event whose outcome is already with the completer may be written (done) by
        # now: not renewed, but not lost either; the completer's fenced write tells.
        lost = [
            d
            for d in held
            if d.row.id not in renewed
            and not d.completed
            and not d.lost
            and not d.cancelled
            and d.row.id in self._inflight
        ]
        for d in lost:
            d.lost = True
        if lost:
            shown = ", ".join(str(d.row.id) for d in lost[:10])
            log.warning(
                "lease lost for %d running event(s) (expired and taken over): %s%s",
                len(lost),
                shown,
                " ..." if len(lost) > 10 else "",
                extra={"count": len(lost), "event_ids": [d.row.id for d in lost[:10]]},
            )

    def _cancelled(self, found: list[Delivery]) -> None:
        """An operator cancelled these events while we ran them: cancel their handlers."""
        fresh = [d for d in found if not d.cancelled and self._inflight.get(d.row.id) is d]
        if not fresh:
            return
        for d in fresh:
            d.cancelled = True
        calls = self._cancel_runs() if self._cancel_runs is not None else 0
        log.info(
            "%d running event(s) cancelled by an operator; %d handler call(s) cancelled: %s%s",
            len(fresh),
            calls,
            ", ".join(str(d.row.id) for d in fresh[:10]),
            " ..." if len(fresh) > 10 else "",
            extra={"count": len(fresh), "event_ids": [d.row.id for d in fresh[:10]]},
        )

    async def _rescue(self) -> None:
        async with self._pool.acquire() as conn:
            held = {d.token for d in self._inflight.values()}
            rows = await self._queries.core.rescue(conn, list(held))
        if rows:
            self.stats.rescued += len(rows)
            self._wake()
            workers = sorted({r["leased_by"] or "?" for r in rows})
            log.warning(
                "rescued %d event(s) whose lease expired (workers: %s)",
                len(rows),
                ", ".join(workers),
                extra={"count": len(rows), "from_workers": workers},
            )

    async def _watch_loop(self, tick: float = 0.25, limit: float = 1.0) -> None:
        """Report handlers that block the event loop (no await for ``limit`` seconds).

        A blocked loop stops heartbeats too, so leases may expire under a live worker: the
        log line names the cure (``asyncio.to_thread`` for blocking calls).
        """
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(tick)
            stall = loop.time() - before - tick
            if stall >= limit:
                self.stats.loop_stalls += 1
                log.warning(
                    "event loop blocked for %.1fs: a handler is doing blocking work; run it "
                    "with asyncio.to_thread (meanwhile only the stall guard renews leases)",
                    stall,
                    extra={"stall_seconds": round(stall, 3)},
                )
