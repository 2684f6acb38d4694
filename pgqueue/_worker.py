"""The worker: claim batches, run every handler of each event, record outcomes in batches.

Tasks of one worker (all in one event loop):

- claimer (the ``run`` coroutine): one statement claims up to ``batch_size`` ready events under
  a lease; it sleeps on NOTIFY (listener) or the poll interval when nothing is ready.
- runners (``concurrency`` of them): run (event, handler) units from a local deque, each under
  its timeout and the handler's quick in-process retries.
- completer: writes finished events with one statement per flush, fenced by lease token. While
  one flush runs the next batch accumulates, so batches grow with load and latency stays low
  when idle.
- heartbeat: renews the leases of everything in flight; rescuer: returns expired leases of dead
  workers to pending.
- scheduler (only when the registry has schedules, and not in burst mode): emits cron ticks
  (``_scheduler.py``).

Shutdown: the first stop request stops claiming and waits up to ``shutdown_timeout`` for
in-flight work; what is still running then is cancelled and handed back at once (attempt
refunded). A second request skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg

from ._backoff import describe_error, is_transient, reconnect_delay
from ._completer import Completer
from ._db import create_pool, pool_options, warn_if_pooler
from ._dispatch import (
    Delivery,
    Kind,
    Outcome,
    error_text,
    finish,
    lost_claims,
    parse_records,
    plan,
)
from ._errors import RegistryError
from ._floor import ReadyFloor
from ._leases import LeaseKeeper
from ._limits import Limiter
from ._listener import Listener
from ._logs import WORKER_ID
from ._metrics import Metrics
from ._migrate import check_schema
from ._models import WorkerStats
from ._queries import ClaimedRow, Queries, queries_for
from ._registry import Handler, Registry
from ._runner import Runners
from ._scheduler import Scheduler
from ._settings import WorkerSettings, check_listen, mask_dsn
from ._tracing import Tracing

log = logging.getLogger("pgqueue.worker")
POOLED_ADVICE = "if it pools by transaction (pool_mode = transaction), run with --pooled"

# Seconds the claim loop waits for a NOTIFY after a batch shorter than asked for.
SHORT_BATCH_WAIT = 0.05


class Worker:
    """Runs the handlers of a :class:`Registry` against one database until stopped.

    ``listen_dsn``: a connection for LISTEN other than ``dsn``; needed when ``dsn`` goes
    through a transaction-mode pooler (``settings.pooled``), where LISTEN receives nothing.
    It must reach PostgreSQL directly (or through a session-mode pooler).
    ``metrics`` (a :class:`Metrics`) collects Prometheus metrics and serves them while the
    worker runs. ``tracer_provider`` traces every handler run with OpenTelemetry; without it,
    tracing is on only when an OpenTelemetry SDK set the global provider.
    """

    def __init__(
        self,
        dsn: str,
        registry: Registry,
        settings: WorkerSettings | None = None,
        *,
        handler_pool_size: int = 10,
        listen_dsn: str | None = None,
        metrics: Metrics | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        check_listen(self.settings, listen_dsn)
        self.registry = registry
        self.stats = WorkerStats()
        self.worker_id = self.settings.worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self._dsn = dsn
        self._listen_dsn = listen_dsn
        self._handler_pool_size = handler_pool_size
        self._queries: Queries = queries_for(self.settings.schema_name)
        self._event_types = list(registry.event_types)
        # The handlers per type, fixed for this run (and looked up twice per event).
        self._handlers = {t: registry.handlers_for(t) for t in self._event_types}
        self._max_inflight = 2 * self.settings.batch_size
        # Burst mode decides "nothing is ready" from a claim, so its claims read everything.
        self._floor = ReadyFloor(self.settings.poll_interval, enabled=not self.settings.burst)
        self._inflight: dict[int, Delivery] = {}
        self._suspects: deque[Delivery] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._force = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._pool: asyncpg.Pool | None = None
        self._claim_pool: asyncpg.Pool | None = None  # one connection: the claim loop's
        self._handler_pool: asyncpg.Pool | None = None
        self._runners: Runners | None = None
        self._completer: Completer | None = None
        self.metrics = metrics
        self._tracing = Tracing.for_worker(tracer_provider)
        self._limiter: Limiter | None = None  # only when some handler has a concurrency limit

    # -- control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop gracefully; a second call stops at once (in-flight work is handed back)."""
        # Called from signal handlers, outside run()'s context: name the worker explicitly.
        fields = {"worker_id": self.worker_id, "in_flight": len(self._inflight)}
        if self._stopping:
            if not self._force.is_set():
                log.warning("second stop request: handing back in-flight events now", extra=fields)
            self._force.set()
        else:
            log.info(
                "stopping: no new claims; waiting up to %.0fs for in-flight handlers",
                self.settings.shutdown_timeout,
                extra=fields,
            )
            self._stopping = True
        self._wakeup.set()
        self._progress.set()

    async def _after_error(self, exc: BaseException) -> None:
        """A read-only session means a failover put us on a standby: open fresh connections
        (to the new primary) instead of reusing the ones that now point at a replica."""
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            for pool in (self._pool, self._claim_pool):
                if pool is not None:
                    await pool.expire_connections()

    def _supervise(self, task: asyncio.Task[Any]) -> None:
        """A background task must never end on its own: if one does, stop the worker loudly
        (exit non-zero, leases expire, events are rescued) rather than run crippled."""
        if task.cancelled() or self._fatal is not None:
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("worker task failed (%s); stopping the worker", describe_error(exc), exc_info=exc)
        self._fatal = exc
        self.request_stop()
        self.request_stop()

    @property
    def in_flight(self) -> int:
        """Events claimed and not yet recorded."""
        return len(self._inflight)

    # -- main ---------------------------------------------------------------------------------

    async def run(self) -> WorkerStats:
        """Run until stopped (or, with ``burst``, until nothing is ready); return counters."""
        # Log lines of this run (and of every task it starts) carry the worker id.
        token = WORKER_ID.set(self.worker_id)
        try:
            return await self._run()
        finally:
            WORKER_ID.reset(token)

    async def _run(self) -> WorkerStats:
        if not self._event_types:
            raise RegistryError("the registry has no handlers; register one with @registry.on(...)")
        s = self.settings
        self._pool = await create_pool(
            self._dsn, min_size=1, max_size=4, **pool_options(pooled=s.pooled, control=True)
        )
        tasks: list[asyncio.Task[Any]] = []
        try:
            async with self._pool.acquire() as conn:
                await check_schema(conn, s.schema_name)
                if not s.pooled:
                    await warn_if_pooler(conn, self._dsn, POOLED_ADVICE)
            self._claim_pool = await create_pool(
                self._dsn,
                min_size=1,
                max_size=1,
                **pool_options(pooled=s.pooled, control=True, generic=True),
            )
            scheduler = None
            if self.registry.schedules and not s.burst:
                scheduler = Scheduler(self._pool, s.schema_name, self.registry.schedules)
                await scheduler.sync()  # a role that may not keep schedules stops us here
            if self.metrics is not None:
                await self.metrics.start(
                    self.worker_id, self._pool, self._queries, s.queues, lambda: self.in_flight
                )
            self._handler_pool = await create_pool(
                self._dsn,
                min_size=0,
                max_size=self._handler_pool_size,
                **pool_options(pooled=s.pooled, control=False),
            )
            log.info(
                "worker %s started: %s schema=%s queues=%s types=%s concurrency=%d batch=%d",
                self.worker_id,
                mask_dsn(self._dsn),
                s.schema_name,
                ",".join(s.queues),
                ",".join(self._event_types),
                s.concurrency,
                s.batch_size,
                extra={"event": "start", "queues": list(s.queues)},
            )
            self._runners = Runners(
                s.concurrency,
                self._record,
                lambda: self._stopping,
                self._handler_pool,
                s.schema_name,
                self.metrics,
                self._tracing,
            )
            self._completer = Completer(
                self._pool,
                self._queries,
                self._inflight,
                self.stats,
                self._progress.set,
                self._after_error,
                self.metrics,
            )
            self._limiter = await self._make_limiter()
            leases = LeaseKeeper(
                self._pool,
                self._queries,
                s,
                self._inflight,
                self.stats,
                self._wakeup.set,
                self._limiter.renew if self._limiter else None,
            )
            tasks = [
                *self._runners.start(),
                asyncio.create_task(self._completer.run()),
                *leases.start(),
                *([self._limiter.start()] if self._limiter else []),
            ]
            if s.listen and not s.burst:
                listener = Listener(
                    self._listen_dsn or self._dsn,
                    self._queries.channel,
                    s.queues,
                    self._wakeup.set,
                )
                tasks.append(asyncio.create_task(listener.run()))
            if scheduler is not None:
                tasks.append(asyncio.create_task(scheduler.run()))
            for task in tasks:
                task.add_done_callback(self._supervise)
            await self._claim_loop()
            await self._drain()
            if self._limiter is not None:
                await self._limiter.close()
            if self._fatal is not None:
                raise self._fatal
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.metrics is not None:
                await self.metrics.stop()
            await self._close()
        log.info(
            "worker %s stopped: %d done, %d retried, %d dead, %d handed back, %d deferred",
            self.worker_id,
            self.stats.done,
            self.stats.retried,
            self.stats.dead,
            self.stats.handed_back,
            self.stats.deferred,
            extra={"event": "stop", **dataclasses.asdict(self.stats)},
        )
        return self.stats

    async def _make_limiter(self) -> Limiter | None:
        """The slot keeper, when the registry limits a handler (else None: no cost at all)."""
        limits = self.registry.limits
        if not limits:
            return None
        assert self._pool is not None and self._runners is not None
        limiter = Limiter(
            self._pool,
            self._queries,
            limits,
            self.worker_id,
            self.settings.lease_seconds,
            self._runners.submit,
            self._record,
        )
        async with self._pool.acquire() as conn:
            log.info("concurrency limits: %s", await limiter.setup(conn))
        return limiter

    async def _close(self) -> None:
        for pool in (self._handler_pool, self._claim_pool, self._pool):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), timeout=5.0)
                except Exception:
                    pool.terminate()

    async def _claim_loop(self) -> None:
        s = self.settings
        failures = 0
        while not self._stopping:
            if self._suspects:
                await self._run_suspects()
                continue
            capacity = self._max_inflight - len(self._inflight)
            if capacity <= 0:
                self._progress.clear()
                await self._progress.wait()
                continue
            self._wakeup.clear()
            # An outcome recorded while the claim ran (a retry back to pending) may be newer
            # than the claim's snapshot: "nothing ready" only counts if nothing was in flight.
            idle_before = not self._inflight
            try:
                claimed, full = await self._claim(min(capacity, s.batch_size))
                failures = 0
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                delay = reconnect_delay(failures)
                log.warning(
                    "claim failed (%s); retrying in %.1fs",
                    describe_error(exc),
                    delay,
                    extra={"error": describe_error(exc), "delay": delay},
                )
                await self._after_error(exc)
                await self._sleep_or_wake(delay)
                continue
            if full:
                continue
            if claimed and not s.burst:
                # A short batch took everything ready in the claim's snapshot; rows committed
                # since then sent a NOTIFY (the wake-up was cleared before the claim). An
                # immediate second claim would find nothing yet still walk the ready index,
                # whose dead entries (claimed rows, until VACUUM) grow with every event: at
                # 10k events/s for 30 s without vacuum that walk reached 1,482 pages (1.4 ms)
                # per claim (EXPLAIN BUFFERS), and it halves the claims under steady load.
                # The wait is short so that a delayed event falling due meanwhile (no NOTIFY
                # announces it) still starts within SHORT_BATCH_WAIT of its run_at.
                await self._sleep_or_wake(min(s.poll_interval, SHORT_BATCH_WAIT))
            elif claimed == 0 and not self._inflight:
                if s.burst and idle_before:
                    return
                if s.burst:
                    continue  # claim once more: it sees what was recorded meanwhile
                await self._sleep_or_wake(await self._idle_timeout())
            elif claimed == 0:
                # Busy with what we have: claim again when something finishes or on NOTIFY.
                self._progress.clear()
                await self._first(self._progress.wait(), self._wakeup.wait(), s.poll_interval)

    async def _idle_timeout(self) -> float:
        """Sleep until the poll interval, or earlier when a delayed event is due sooner."""
        timeout = self.settings.poll_interval
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                for queue in self.settings.queues:
                    due = await self._queries.seconds_until_due(conn, queue, self._event_types)
                    if due is not None:
                        timeout = min(timeout, max(due, 0.0) + 0.001)
        except Exception as exc:
            if not is_transient(exc):
                raise
        return timeout

    async def _first(self, a: Any, b: Any, timeout: float) -> None:
        tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()

    async def _sleep_or_wake(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=timeout)

    async def _claim(self, limit: int) -> tuple[int, bool]:
        """Claim from each queue; return (events claimed, whether a queue gave a full batch)."""
        assert self._claim_pool is not None
        s = self.settings
        total, full = 0, False
        async with self._claim_pool.acquire() as conn:
            for queue in s.queues:
                token = uuid.uuid4()
                rows = await self._queries.claim_batch(
                    conn,
                    queue,
                    self._event_types,
                    limit - total,
                    token,
                    self.worker_id,
                    s.lease_seconds,
                    self._floor.bound(queue),
                )
                self._floor.claimed(queue, rows, limit - total)
                self._dispatch(rows, token)
                total += len(rows)
                full = full or len(rows) == limit
                if total >= limit:
                    break
        return total, full

    def _dispatch(self, rows: list[ClaimedRow], token: uuid.UUID) -> None:
        now = time.monotonic()
        self.stats.claimed += len(rows)
        for row in rows:
            delivery = Delivery(row, token, now, parse_records(row.handlers))
            self._inflight[row.id] = delivery
            if lost_claims(delivery):
                self._suspects.append(delivery)
            else:
                self._start(delivery)
        # Hold one suspect at a time: one waiting in our hands would lose an attempt too if the
        # one running kills us. The others go back to pending at once, attempt refunded.
        while len(self._suspects) > 1:
            self._hand_back(self._suspects.pop())

    def _start(self, delivery: Delivery) -> None:
        """Plan an event's handlers and queue them for the runners."""
        row = delivery.row
        handlers = self._handlers[row.event_type]
        units = plan(delivery, handlers)
        if units:
            try:
                payload = json.loads(row.payload)
            except (ValueError, RecursionError) as exc:
                # PostgreSQL accepts JSON nested deeper than Python can decode: such an
                # event can never run, so it goes dead at once instead of crashing us.
                text = f"payload cannot be decoded: {error_text(exc)}"
                log.warning(
                    "event %d is dead: %s",
                    row.id,
                    text,
                    extra={"event_id": row.id, "event_type": row.event_type},
                )
                for handler, prior in units:
                    delivery.outcomes[handler.name] = Outcome(Kind.DEAD, prior + 1, text)
                delivery.waiting = 0
                self._complete(delivery)
                return
            assert self._runners is not None
            if self._limiter is not None:
                # Limited handlers wait for a slot (the limiter starts or defers them); the
                # others start now, whatever the limits do.
                units = self._limiter.take(delivery, units, payload)
            self._runners.submit((delivery, h, prior, payload) for h, prior in units)
        else:
            self._complete(delivery)

    def _hand_back(self, delivery: Delivery) -> None:
        """Give back a claimed event without running it: its attempt is refunded."""
        units = plan(delivery, self._handlers[delivery.row.event_type])
        if not units:
            self._complete(delivery)
        for handler, prior in units:
            self._record(delivery, handler, Outcome(Kind.INTERRUPTED, prior))

    async def _run_suspects(self) -> None:
        """Run events whose earlier claim never wrote back, one at a time, alone.

        Such an event may be the one that killed a worker (attempts count at claim, so every
        event that worker held lost one). Running it alone, after everything else in flight
        is recorded, means that if it kills this worker too, no innocent event pays for it.
        """
        while self._suspects and not self._stopping:
            suspect = self._suspects[0]
            await self._wait_until(lambda: len(self._inflight) <= len(self._suspects))
            if self._stopping:
                return
            self._suspects.popleft()
            self._start(suspect)
            await self._wait_until(self._recorded(suspect.row.id))

    def _recorded(self, event_id: int) -> Callable[[], bool]:
        return lambda: event_id not in self._inflight

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition() and not self._stopping:
            self._progress.clear()
            await self._first(
                self._progress.wait(), self._wakeup.wait(), self.settings.poll_interval
            )

    # -- running handlers ---------------------------------------------------------------------

    def _record(self, d: Delivery, handler: Handler, outcome: Outcome) -> None:
        if self._limiter is not None and handler.concurrency is not None:
            self._limiter.release(d, handler)  # it finished: its slot goes back at once
        d.outcomes[handler.name] = outcome
        d.waiting -= 1
        if d.waiting == 0:
            self._complete(d)

    def _complete(self, d: Delivery) -> None:
        d.completed = True
        completion = finish(d, self._handlers[d.row.event_type])
        assert self._completer is not None
        self._completer.add(completion)

    # -- shutdown -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        while self._suspects:  # never started: hand them back now
            self._hand_back(self._suspects.popleft())
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while self._inflight and not self._force.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._progress.clear()
            await self._first(self._progress.wait(), self._force.wait(), remaining)
        if not self._inflight:
            return
        # Hand back whatever is still running or queued: cancel the runners (each records its
        # unit as interrupted), mark queued units interrupted, and write it all once.
        assert self._runners is not None
        if self._limiter is not None:  # units still waiting for a slot go back too
            for delivery, handler, prior, _ in await self._limiter.stop():
                self._record(delivery, handler, Outcome(Kind.INTERRUPTED, prior))
        await self._runners.cancel()
        while self._runners.units:
            delivery, handler, prior, _ = self._runners.units.popleft()
            self._record(delivery, handler, Outcome(Kind.INTERRUPTED, prior))
        # The completer writes them; give it a few seconds before leaving it to the leases.
        deadline = time.monotonic() + 5.0
        while self._inflight and time.monotonic() < deadline:
            self._progress.clear()
            await self._first(
                self._progress.wait(), asyncio.sleep(3600), deadline - time.monotonic()
            )
        if self._inflight:
            log.warning(
                "could not hand back %d event(s); their leases will expire", len(self._inflight)
            )
