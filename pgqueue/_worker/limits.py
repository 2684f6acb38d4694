"""Per-handler concurrency limits shared by every worker, enforced in the database.

A handler registered with ``concurrency=N`` runs only while its worker holds one of the
handler's N slots (rows of ``handler_slots``, see ``sql/0006_limits.sql`` for why rows and not
advisory locks). The path of a limited (event, handler) unit:

- the worker plans the event as usual; units of unlimited handlers go to the runners at once,
  units of limited ones wait here (:meth:`Limiter.take`);
- the limiter task takes slots for everything waiting in ONE statement (``FOR UPDATE SKIP
  LOCKED``, several slots of several handlers at once, never waiting on another worker);
- a unit that got a slot runs. Of those that did not, the oldest few (up to the handler's
  limit, per worker) wait here up to ``HOLD`` seconds, trying again every ``TICK`` and at once
  when this worker releases a slot; the others, and those whose hold is over, are recorded as
  ``Kind.DEFERRED``: the record gets ``not_before`` = now + :func:`defer_delay`, the event goes
  back to pending, and no attempt is used (the event's siblings ran at once anyway);
- when the handler finishes, its slot is released; releases are written in one statement per
  flush, in the same connection checkout as the next acquisition;
- the heartbeat renews the leases of the slots held (:meth:`Limiter.renew`); a killed worker's
  slots free up when their lease expires (``--lease`` seconds), like its events.

Unlimited handlers pay nothing: a worker whose registry has no limit has no limiter at all
(one ``is None`` test per event), and its heartbeat writes no slot.

Which limit wins: ``handler_limits.override`` (set by an operator with SQL) while it is set,
else ``handler_limits.concurrency``, the registry's value, rewritten by every worker at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._backoff import describe_error
from .._errors import ConfigurationError
from .._queries import Queries, queries_for
from .._registry import Handler
from .dispatch import Delivery, Kind, Outcome
from .loop import run_with_backoff
from .runner import Unit

log = logging.getLogger("pgqueue.worker")

# Why hold a few units in the worker: deferred events come back only after their backoff, so
# without waiters at hand a freed slot sits idle until one returns. Holding at most `limit`
# units per handler and worker keeps the worker's in-flight room (shared with every other
# event type) free; the rest go back to the database at once.
# Measured (limit 5, runs of 0.5 s, 2 workers, backoff as below; ideal = runs x 0.5 s / 5 +
# 1.1 s of start, i.e. 5.1 s for 40 runs, 11.1 s for 100): no hold 6.6-7.3 s and 12.0-14.3 s;
# hold 2 s 5.3-5.7 s and 11.2-12.7 s. (A 5 s backoff cap without hold took 20.5 s for 100.)
HOLD = 2.0
TICK = 0.1
# Deferral backoff: 0.25 s, doubling with every deferral in a row of this (event, handler), at
# most 2 s, times a random factor in [0.5, 1] so that deferred events do not come back in step.
# Growing, because every deferral costs a claim and a completion (about 25 us of database
# time): a backlog of 10,000 events behind a full limit costs at most ~7,000 deferrals/s, not a
# busy loop. Capped low, because slots sit idle while deferred events wait out their backoff,
# and so that after three deferrals old and new events retry equally often (no starvation).
DEFER_BASE = 0.25
DEFER_CAP = 2.0


def defer_delay(deferrals: int) -> float:
    """Seconds before a handler deferred ``deferrals`` times in a row is tried again."""
    return min(DEFER_CAP, DEFER_BASE * (1 << min(deferrals, 16))) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class HandlerLimit:
    """One handler's limits as stored: the registry's concurrency, the operator's override,
    how many slots are held now, and the rate limit."""

    handler: str
    registry: int | None
    override: int | None
    running: int
    # The rate limit (sql/0018): the registry's, the operator's, per ordering key or not.
    rate_registry: str | None = None
    rate_override: str | None = None
    rate_per_key: bool = False

    @property
    def limit(self) -> int | None:
        """The limit in force: the override while it is set, else the registry's value."""
        return self.override if self.override is not None else self.registry

    @property
    def rate(self) -> str | None:
        """The rate in force: the override while it is set, else the registry's."""
        return self.rate_override if self.rate_override is not None else self.rate_registry


async def list_limits(conn: Any, schema: str = "pgqueue") -> list[HandlerLimit]:
    """Every stored limit, by handler name."""
    return [HandlerLimit(*row) for row in await queries_for(schema).limits.limits_list(conn)]


async def override_limit(
    conn: Any, handler: str, override: int | None, schema: str = "pgqueue"
) -> None:
    """Set the operator's override of ``handler``'s limit (None: back to the registry's).
    Takes effect at once for new runs; runs in progress finish."""
    if override is not None and override < 1:
        raise ConfigurationError(f"a limit must be at least 1, not {override}")
    if not await queries_for(schema).limits.limit_override(conn, handler, override):
        raise ConfigurationError(
            f"handler {handler!r} has no concurrency limit (no worker registered it with "
            f"concurrency=N yet); see them with: pgqueue limits"
        )


class Limiter:
    """Takes, renews and releases the slots of limited handlers for one worker."""

    name = "limiter"

    def __init__(
        self,
        *,
        pool: Any,
        queries: Queries,
        limits: dict[str, int],
        worker_id: str,
        lease_seconds: float,
        submit: Callable[[Iterable[Unit]], None],
        record: Callable[[Delivery, Handler, Outcome], None],
    ) -> None:
        # One token per worker run: the fence of every slot it holds (a slot whose lease
        # expired and was taken over has another token, so our late release changes nothing).
        self.token = uuid.uuid4()
        self.limits = limits
        self._pool = pool
        self._queries = queries
        self._worker_id = worker_id
        self._lease = lease_seconds
        self._submit = submit
        self._record = record
        self._waiting: list[tuple[float, Unit]] = []  # (hold until, unit), oldest first
        self._releases: list[tuple[str, int]] = []
        self._held: dict[tuple[int, str], tuple[str, int]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None

    async def setup(self, conn: Any) -> str:
        """Write the registry's limits (the operator's overrides stay); describe the
        limits in force, for the worker's start line."""
        names = sorted(self.limits)
        await self._queries.limits.limits_write(conn, names, [self.limits[n] for n in names])
        rows = await self._queries.limits.limits_read(conn, names)
        return ",".join(
            f"{r['handler']}={r['override'] or r['concurrency']}"
            + (" (override)" if r["override"] is not None else "")
            for r in rows
        )

    async def run(self) -> None:
        """Take and release slots until cancelled (by the worker, or by :meth:`stop`)."""
        self._task = asyncio.current_task()
        await run_with_backoff(
            self._take_and_release, "taking concurrency slots", on_error=self._retry_soon
        )

    def take(
        self, delivery: Delivery, units: list[tuple[Handler, int]], payload: Any
    ) -> list[tuple[Handler, int]]:
        """Keep the limited units (they wait for a slot); return the others, to run now."""
        free: list[tuple[Handler, int]] = []
        for handler, prior in units:
            if handler.concurrency is None:
                free.append((handler, prior))
            else:
                deadline = time.monotonic() + HOLD
                self._waiting.append((deadline, (delivery, handler, prior, payload)))
                self._wake.set()
        return free

    def release(self, delivery: Delivery, handler: Handler) -> None:
        """The handler finished (any outcome): give its slot back at the next flush."""
        held = self._held.pop((delivery.row.id, handler.name), None)
        if held is not None:
            self._releases.append(held)
            self._wake.set()

    async def renew(self, conn: Any) -> None:
        """Extend the leases of the slots held (called by the heartbeat)."""
        if self._held:
            held = list(self._held.values())
            await self._queries.limits.slots_renew(
                conn, [h for h, _ in held], [s for _, s in held], self.token, self._lease
            )

    async def stop(self) -> list[Unit]:
        """Stop taking slots; return the units still waiting for one (to hand back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting, self._waiting = self._waiting, []
        return [unit for _, unit in waiting]

    async def close(self) -> None:
        """Give back every slot this worker holds, in one statement. Best effort: a slot not
        given back frees up when its lease expires."""
        await self.stop()
        try:
            async with self._pool.acquire() as conn:
                await asyncio.wait_for(
                    self._queries.limits.slots_release_all(conn, self.token), 5.0
                )
        except Exception as exc:
            log.warning("could not give back concurrency slots (%s)", describe_error(exc))

    async def _take_and_release(self) -> float:
        if self._waiting:  # units hold for a slot: try again every TICK
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
        else:
            await self._wake.wait()
        self._wake.clear()
        await self._flush()
        return 0.0

    async def _retry_soon(self, exc: BaseException) -> None:
        # Never stop: the releases are retried, the units deferred, after the backoff.
        self._wake.set()

    async def _flush(self) -> None:
        """Write the releases, then take slots for every waiting unit: one checkout."""
        releases, self._releases = self._releases, []
        waiting, self._waiting = self._waiting, []
        granted: list[tuple[str, int]] = []
        try:
            async with self._pool.acquire() as conn:
                if releases:
                    names, slots = [h for h, _ in releases], [s for _, s in releases]
                    await self._queries.limits.slots_release(conn, names, slots, self.token)
                    releases = []
                if waiting:
                    wanted = Counter(unit[1].name for _, unit in waiting)
                    granted = await self._queries.limits.slots_acquire(
                        conn,
                        list(wanted),
                        list(wanted.values()),
                        self.token,
                        self._worker_id,
                        self._lease,
                    )
        except asyncio.CancelledError:
            self._releases[:0] = releases
            self._waiting[:0] = waiting
            raise
        except Exception:
            # Releases are retried; waiting units are deferred (their events must not sit in
            # this worker while the database misbehaves). A slot taken by a statement whose
            # answer was lost is not renewed, so it frees up when its lease expires.
            self._releases[:0] = releases
            self._assign(waiting, [], hold=False)
            raise
        self._assign(waiting, granted)

    def _assign(
        self, waiting: list[tuple[float, Unit]], granted: list[tuple[str, int]], hold: bool = True
    ) -> None:
        """Start the units that got a slot (oldest first); hold the next few; defer the rest."""
        free: dict[str, list[int]] = {}
        for name, slot in granted:
            free.setdefault(name, []).append(slot)
        run: list[Unit] = []
        keep: list[tuple[float, Unit]] = []
        kept: Counter[str] = Counter()
        now = time.monotonic()
        for deadline, unit in waiting:
            delivery, handler, prior, _ = unit
            slots = free.get(handler.name)
            if slots:
                self._held[(delivery.row.id, handler.name)] = (handler.name, slots.pop())
                run.append(unit)
                continue
            if hold and deadline > now and kept[handler.name] < self.limits[handler.name]:
                kept[handler.name] += 1
                keep.append((deadline, unit))
                continue
            record = (delivery.records or {}).get(handler.name)
            delay = defer_delay(record.deferred if record is not None else 0)
            self._record(delivery, handler, Outcome(Kind.DEFERRED, prior, delay=delay))
        self._waiting[:0] = keep
        if run:
            self._submit(run)
