"""Paused queues, the worker side: the service that reads its queues' pauses once per poll
interval, so a pause costs no statement on the claim path (operator side: ``_pauses.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .._queries import queries_for
from .loop import run_with_backoff

log = logging.getLogger("pgqueue.worker")


class PausedQueues:
    """A worker's view of which of its queues are paused, read once per ``interval``: a
    service (``run()``) of the worker, which reads :attr:`paused` before each claim."""

    name = "paused queues"

    def __init__(
        self,
        *,
        pool: Any,
        schema: str,
        queues: list[str],
        interval: float,
        wake: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._wake = wake  # a resumed queue is claimed at once, not at the next poll
        self._queries = queries_for(schema).flow
        self._queues = queues
        self._interval = interval
        self.paused: frozenset[str] = frozenset()

    async def refresh(self) -> None:
        """Read the pauses of our queues now; log what changed."""
        async with self._pool.acquire() as conn:
            paused = frozenset(await self._queries.paused_among(conn, self._queues))
        for queue in sorted(paused - self.paused):
            log.info("queue %s is paused: not claiming from it", queue, extra={"queue": queue})
        resumed = self.paused - paused
        for queue in sorted(resumed):
            log.info("queue %s is resumed", queue, extra={"queue": queue})
        self.paused = paused
        if resumed:
            self._wake()

    async def run(self) -> None:
        """Refresh every interval until cancelled (the worker read them once before its first
        claim); a failed read keeps the last view and is retried sooner than the interval,
        never later."""

        async def step() -> float:
            await self.refresh()
            return self._interval

        await asyncio.sleep(self._interval)
        await run_with_backoff(step, "reading paused queues", cap=self._interval)
