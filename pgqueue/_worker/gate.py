"""The common shape of the worker's gates (ordering keys, rate limits): units wait in a list,
one task decides for all of them in one database round trip, the ones let through go on, the
others are deferred (``Kind.DEFERRED``: back to pending, no attempt used).

A gate never holds a unit past one round trip: what may not run now goes back to the database
at once with a delay chosen by the gate, so a stopping worker has little to hand back.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .._registry import Handler
from .dispatch import Delivery, Kind, Outcome
from .loop import run_with_backoff
from .runner import Unit

# When the gate's statement fails: the waiting units come back after this long.
ON_ERROR_DELAY = 1.0


class Gate(ABC):
    """Holds the units it is given until one statement says which may run now.

    A service (``_loop.Service``): the worker starts :meth:`run` as one task and supervises it.
    """

    #: The service's name (its task's name).
    name = "gate"
    #: What the gate does, for its log line when the database misbehaves.
    what = "gate"

    def __init__(
        self,
        *,
        pool: Any,
        admit: Callable[[list[Unit]], None],
        record: Callable[[Delivery, Handler, Outcome], None],
    ) -> None:
        self._pool = pool
        self._admit = admit
        self._record = record
        self._waiting: list[Unit] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    @abstractmethod
    def wants(self, delivery: Delivery, handler: Handler) -> bool:
        """Whether this unit must pass the gate (the others go on at once)."""

    @abstractmethod
    async def decide(self, conn: Any, waiting: list[Unit]) -> dict[int, float]:
        """Index (in ``waiting``) -> deferral delay in seconds, of the units that may not run
        now; every other unit runs."""

    def take(
        self, delivery: Delivery, units: list[tuple[Handler, int]], payload: Any
    ) -> list[Unit]:
        """Keep the units this gate decides on; return the others, to go on now."""
        free: list[Unit] = []
        for handler, prior in units:
            if self.wants(delivery, handler):
                self._waiting.append((delivery, handler, prior, payload))
                self._wake.set()
            else:
                free.append((delivery, handler, prior, payload))
        return free

    async def run(self) -> None:
        """Decide for the waiting units until cancelled (by the worker, or by :meth:`stop`)."""
        self._task = asyncio.current_task()
        await run_with_backoff(self._decide_waiting, self.what)

    async def stop(self) -> list[Unit]:
        """Stop; return the units still waiting (to hand back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting, self._waiting = self._waiting, []
        return waiting

    def defer(self, unit: Unit, delay: float) -> None:
        """Record ``unit`` as deferred by ``delay`` seconds."""
        delivery, handler, prior, _ = unit
        self._record(delivery, handler, Outcome(Kind.DEFERRED, prior, delay=delay))

    async def _decide_waiting(self) -> float:
        # A failure never stops the gate: the waiting units were deferred (see _flush), and
        # run_with_backoff logs it and waits before the next round.
        await self._wake.wait()
        self._wake.clear()
        await self._flush()
        return 0.0

    async def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        try:
            async with self._pool.acquire() as conn:
                deferred = await self.decide(conn, waiting)
        except asyncio.CancelledError:
            self._waiting[:0] = waiting
            raise
        except Exception:
            # Nothing may run unchecked, and the events must not sit in this worker while
            # the database misbehaves: defer them all.
            for unit in waiting:
                self.defer(unit, ON_ERROR_DELAY)
            raise
        run: list[Unit] = []
        for i, unit in enumerate(waiting):
            delay = deferred.get(i)
            if delay is None:
                run.append(unit)
            else:
                self.defer(unit, delay)
        if run:
            self._admit(run)
