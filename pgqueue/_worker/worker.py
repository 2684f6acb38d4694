"""The worker: claim batches, run every handler of each event, record outcomes in batches.

Tasks of one worker (all in one event loop):

- claimer (the ``run`` coroutine): one statement claims up to ``batch_size`` ready events under
  a lease; it sleeps on NOTIFY (listener) or the poll interval when nothing is ready.
- runners (``concurrency`` of them): run (event, handler) units from a local deque, each under
  its timeout and the handler's quick in-process retries; a plain-``def`` handler runs in the
  bounded thread pool (``sync_threads``, ``_worker/threads.py``) while its runner awaits it.
- completer: writes finished events with one statement per flush, fenced by lease token. While
  one flush runs the next batch accumulates, so batches grow with load and latency stays low
  when idle.
- heartbeat: renews the leases of everything in flight; rescuer: returns expired leases of dead
  workers to pending; loop watchdog: logs when the event loop stalls (all in ``_worker/leases.py``).
- presence: the worker's row in `workers` (`_worker/presence.py`), renewed every heartbeat.
- limiter (only when a handler has a concurrency limit): leases and renews its slots
  (``_worker/limits.py``).
- scheduler (only when the registry has schedules, and not in burst mode): emits cron ticks
  (``_worker/scheduler.py``).
- relay lanes (only when a handler is a relay): one per relay publishes its units in
  batches (``_relay/batches.py``).

Each claimed event then passes through the intake (``_worker/intake.py``: suspects, planning,
outcomes). Shutdown (``_worker/shutdown.py``): the first stop request stops claiming and waits up to
``shutdown_timeout`` for in-flight work; what is still running then is cancelled and handed
back at once (attempt refunded). A second request skips the wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from .._backoff import describe_error, is_transient, reconnect_delay
from .._db import create_pool, pool_options, warn_if_pooler
from .._errors import ConfigurationError, RegistryError
from .._logs import WORKER_ID
from .._metrics import Metrics
from .._migrate import check_schema
from .._models import WorkerStats
from .._queries import Queries, queries_for
from .._queries.relay import source_identity
from .._registry import DEFAULT_TIMEOUT, Registry
from .._relay.base import BrokerUnavailable
from .._relay.batches import RelayBatches, destinations_for
from .._settings import WorkerSettings, check_listen, mask_dsn
from .._tracing import Tracing
from .completer import Completer
from .dispatch import Delivery
from .floor import ReadyFloor
from .intake import Intake, Route
from .leases import LeaseKeeper
from .limits import Limiter
from .listener import Listener
from .loop import Service
from .ordering import Orderer
from .pauses import PausedQueues
from .presence import Presence
from .rates import RateGate
from .runner import Runners
from .scheduler import Scheduler
from .shutdown import Shutdown
from .stallguard import StallGuard
from .threads import ThreadPool
from .wakeups import Wakeups

log = logging.getLogger("pgqueue.worker")
POOLED_ADVICE = "if it pools by transaction (pool_mode = transaction), run with --pooled"

# Seconds the claim loop waits for a NOTIFY after a batch shorter than asked for.
SHORT_BATCH_WAIT = 0.05

# A claim made with nothing in flight takes at most this many events, so that a burst landing
# on an idle worker starts its first handler after a small claim (about 1.5 ms) rather than a
# full batch (about 10 ms for 1,000 rows); full-size claims follow while those run.
FIRST_CLAIM = 100


@dataclasses.dataclass
class _Parts:
    """What one run built, so that stopping closes exactly that (also after a failed start)."""

    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    threads: ThreadPool | None = None
    presence: Presence | None = None
    intake: Intake | None = None  # and its route: runners, limiter, relay lanes, gates


class Worker:
    """Runs the handlers of a :class:`Registry` against one database until stopped.

    ``settings.listen_dsn``: a connection for LISTEN other than ``dsn``; needed when ``dsn``
    goes through a transaction-mode pooler (``settings.pooled``), where LISTEN receives
    nothing. It must reach PostgreSQL directly (or through a session-mode pooler).
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
        metrics: Metrics | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        check_listen(self.settings)
        self.registry = registry
        self.stats = WorkerStats()
        self.worker_id = self.settings.worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self._dsn = dsn
        self._queries: Queries = queries_for(self.settings.schema_name)
        self._event_types = list(registry.event_types)
        self._max_inflight = 2 * self.settings.batch_size
        # Burst mode decides "nothing is ready" from a claim, so its claims read everything.
        self._floor = ReadyFloor(self.settings.poll_interval, enabled=not self.settings.burst)
        self._inflight: dict[int, Delivery] = {}
        self._wakeups = Wakeups(self.settings.poll_interval)
        self._shutdown = Shutdown(self._wakeups, self.settings.shutdown_timeout)
        self._fatal: BaseException | None = None
        self._pool: asyncpg.Pool | None = None
        self._claim_pool: asyncpg.Pool | None = None  # one connection: the claim loop's
        self._handler_pool: asyncpg.Pool | None = None
        self._pauses: PausedQueues | None = None  # read before the first claim
        self.metrics = metrics
        self._tracing = Tracing.for_worker(tracer_provider)

    # -- control ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop gracefully; a second call stops at once (in-flight work is handed back)."""
        # Called from signal handlers, outside run()'s context: name the worker explicitly.
        self._shutdown.request({"worker_id": self.worker_id, "in_flight": len(self._inflight)})

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
        parts = _Parts()
        try:
            scheduler = await self._open()
            intake, services = await self._build(parts, scheduler)
            route = intake.route
            # Every service alike: one task each, supervised; runner slots are a work pool that
            # the shutdown drains (see _worker/shutdown.py), not services.
            parts.tasks = [
                *route.runners.start(),
                *(asyncio.create_task(svc.run(), name=f"pgqueue {svc.name}") for svc in services),
            ]
            for task in parts.tasks:
                task.add_done_callback(self._supervise)
            await self._claim_until_stopped(intake)
            await self._shutdown.drain(intake)
            if route.limiter is not None:
                await route.limiter.close()
            if self._fatal is not None:
                raise self._fatal
        finally:
            await self._stop(parts)
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

    async def _open(self) -> Scheduler | None:
        """Open the pools, check the schema, register the schedules, start the metrics;
        return the scheduler (None: no schedules, or a burst run)."""
        s = self.settings
        self._pool = await create_pool(
            self._dsn, min_size=1, max_size=4, **pool_options(pooled=s.pooled, control=True)
        )
        async with self._pool.acquire() as conn:
            await check_schema(conn, s.schema_name, dsn_hint=self._dsn)
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
            max_size=s.handler_pool_size,
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
        return scheduler

    async def _build(
        self, parts: _Parts, scheduler: Scheduler | None
    ) -> tuple[Intake, list[Service]]:
        """Build this run's parts into ``parts``, by name: the intake and its route, then the
        background services; return the intake and the services to start."""
        completer = Completer(
            pool=self._pool,
            queries=self._queries,
            inflight=self._inflight,
            stats=self.stats,
            on_progress=self._wakeups.progress.set,
            after_error=self._after_error,
            observer=self.metrics,
        )
        intake = await self._intake(parts, completer)
        return intake, [completer, *await self._services(parts, intake.route, scheduler)]

    async def _intake(self, parts: _Parts, completer: Completer) -> Intake:
        """The intake and its route, built in one step, then set up (gates in the database,
        relays connected)."""
        if any(not h.is_async for h in self.registry):
            parts.threads = ThreadPool(self.settings.sync_threads)
        relay_source = await self._relay_source()
        parts.intake = intake = Intake(
            registry=self.registry,
            inflight=self._inflight,
            stats=self.stats,
            wakeups=self._wakeups,
            stopping=lambda: self._shutdown.stopping,
            completer=completer,
            route=lambda intake: self._route(intake, parts.threads, relay_source),
        )
        await self._set_up(intake.route)
        return intake

    def _route(self, intake: Intake, threads: ThreadPool | None, relay_source: str | None) -> Route:
        """The parts ``intake`` hands work to, each reporting back to it; a gate or the relay
        lanes only when some handler needs them (else None: no cost at all)."""
        s = self.settings
        runners = Runners(
            concurrency=s.concurrency,
            record=intake.record,
            stopping=lambda: self._shutdown.stopping,
            pool=self._handler_pool,
            schema=s.schema_name,
            observer=self.metrics,
            tracing=self._tracing,
            threads=threads,
        )
        return Route(
            runners=runners,
            limiter=self._limiter(intake, runners),
            relays=self._relays(intake, relay_source),
            orderer=self._orderer(intake),
            rates=self._rates(intake),
        )

    async def _services(
        self, parts: _Parts, route: Route, scheduler: Scheduler | None
    ) -> list[Service]:
        """The background services besides the completer: leases, stall guard, presence,
        paused queues, the route's gates, and the listener and scheduler when they apply."""
        s = self.settings
        parts.presence = Presence(
            pool=self._pool,
            settings=s,
            worker_id=self.worker_id,
            event_types=self._event_types,
            in_flight=lambda: self.in_flight,
        )
        self._pauses = PausedQueues(
            pool=self._pool,
            schema=s.schema_name,
            queues=list(s.queues),
            interval=s.poll_interval,
            wake=self._wakeups.wakeup.set,
        )
        await self._pauses.refresh()  # before the first claim
        services: list[Service] = [*self._lease_services(route), parts.presence, self._pauses]
        for gate in (route.limiter, route.orderer, route.rates):
            if gate is not None:
                services.append(gate)
        if route.relays is not None:
            services.extend(route.relays.lanes)  # each publishes its relay's units in batches
        if s.listen and not s.burst:
            services.append(
                Listener(
                    dsn=s.listen_dsn or self._dsn,
                    queries=self._queries,
                    queues=s.queues,
                    wake=self._wakeups.wakeup.set,
                    swept=self._swept,
                )
            )
        if scheduler is not None:
            services.append(scheduler)
        return services

    def _lease_services(self, route: Route) -> list[Service]:
        """The lease keeper (heartbeat, rescuer, loop watch) and the stall guard."""
        s = self.settings
        keeper = LeaseKeeper(
            pool=self._pool,
            queries=self._queries,
            settings=s,
            inflight=self._inflight,
            stats=self.stats,
            wake=self._wakeups.wakeup.set,
            renew_slots=route.limiter.renew if route.limiter else None,
            cancel_runs=route.runners.cancel_runs,
        )
        guard = StallGuard(
            dsn=self._dsn,
            connect_options=pool_options(pooled=s.pooled, control=True),
            queries=self._queries,
            inflight=self._inflight,
            lease_seconds=s.lease_seconds,
            interval=s.heartbeat_interval,
            grace=self._stall_grace(),
        )
        return [keeper, guard]

    async def _claim_until_stopped(self, intake: Intake) -> None:
        try:
            await self._claim_loop(intake)
        except Exception as exc:
            # A claim error that retrying cannot cure: stop, but hand back what we hold
            # first, so those events run elsewhere now rather than when their leases end.
            log.error("claiming failed (%s); stopping the worker", describe_error(exc))
            self._fatal = exc
            self.request_stop()
            self.request_stop()

    async def _stop(self, parts: _Parts) -> None:
        """Cancel the tasks, then close what this run opened (whatever got opened)."""
        for task in parts.tasks:
            task.cancel()
        await asyncio.gather(*parts.tasks, return_exceptions=True)
        if parts.threads is not None:
            parts.threads.close()
        if parts.presence is not None:
            await parts.presence.leave()
        if self.metrics is not None:
            await self.metrics.stop()
        relays = parts.intake.route.relays if parts.intake is not None else None
        if relays is not None:
            await relays.close()
        await self._close()

    def _stall_grace(self) -> float:
        """How long a blocked event loop may keep its leases (see _worker/stallguard.py): twice the
        longest handler timeout (a handler without one counts as DEFAULT_TIMEOUT), and at
        least two leases. Past that the worker counts as dead and its events are rescued."""
        timeouts = [
            h.timeout or DEFAULT_TIMEOUT
            for t in self._event_types
            for h in self.registry.handlers_for(t)
        ]
        return max(2 * max(timeouts, default=DEFAULT_TIMEOUT), 2 * self.settings.lease_seconds)

    def _limiter(self, intake: Intake, runners: Runners) -> Limiter | None:
        """The slot keeper, when the registry limits a handler."""
        if not self.registry.limits:
            return None
        return Limiter(
            pool=self._pool,
            queries=self._queries,
            limits=self.registry.limits,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            submit=runners.submit,
            record=intake.record,
        )

    def _orderer(self, intake: Intake) -> Orderer | None:
        """The keeper of key order, when the registry has an ordered handler."""
        if not self.registry.ordered:
            return None
        return Orderer(
            pool=self._pool,
            queries=self._queries.ordering,
            ordered=self.registry.ordered,
            admit=intake.admit_ordered,
            record=intake.record,
        )

    def _rates(self, intake: Intake) -> RateGate | None:
        """The token taker, when the registry has a rated handler."""
        rates = self.registry.rates
        if not rates:
            return None
        return RateGate(
            pool=self._pool,
            queries=self._queries.rates,
            per_key={name: per_key for name, (_, per_key) in rates.items()},
            admit=intake.admit_rated,
            record=intake.record,
        )

    async def _relay_source(self) -> str | None:
        """The prefix of relayed messages' dedupe ids (None: no relay handler)."""
        if not any(h.relay is not None for h in self.registry):
            return None
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            return await source_identity(conn, self.settings.schema_name)

    def _relays(self, intake: Intake, source: str | None) -> RelayBatches | None:
        """The batch path of relay handlers (connected by :meth:`_set_up`)."""
        if source is None:
            return None
        return RelayBatches(
            handlers=[h for h in self.registry if h.relay is not None],
            source=source,
            batch_size=self.settings.batch_size,
            record=intake.record,
            observer=self.metrics,
        )

    async def _set_up(self, route: Route) -> None:
        """Register the route's limits and rates in the database and connect its relays (a
        broker that cannot be reached at start is a configuration error, not an outage)."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            if route.limiter is not None:
                log.info("concurrency limits: %s", await route.limiter.setup(conn))
            if route.rates is not None:
                rates = self.registry.rates
                await route.rates.setup(conn, {name: rate for name, (rate, _) in rates.items()})
                shown = ",".join(f"{n}={r}" for n, (r, _) in sorted(rates.items()))
                log.info("rate limits: %s", shown)
        if route.relays is not None:
            handlers = [h for h in self.registry if h.relay is not None]
            try:
                await route.relays.open(destinations_for(handlers, self.settings.queues))
            except BrokerUnavailable as exc:  # _stop closes the relays
                raise ConfigurationError(
                    f"{exc}; check the URL and that the broker runs (events wait in the outbox)"
                ) from None

    async def _close(self) -> None:
        # All at once: each graceful close waits for its server's goodbye (3 pools one after
        # the other were ~9 ms of a 20,000-event burst run's ~450 ms).
        pools = [p for p in (self._handler_pool, self._claim_pool, self._pool) if p is not None]
        await asyncio.gather(*(_close_pool(pool) for pool in pools))

    def _swept(self, queues: Sequence[str]) -> None:
        """After a notification (and its sweep): claim ``queues`` again, reading it all."""
        self._floor.owe_full(queues)
        self._wakeups.wakeup.set()

    async def _claim_loop(self, intake: Intake) -> None:
        s = self.settings
        failures = 0
        while not self._shutdown.stopping:
            if intake.suspects:
                await intake.run_suspects()
                continue
            capacity = self._max_inflight - len(self._inflight)
            if capacity <= 0:
                self._wakeups.progress.clear()
                await self._wakeups.progress.wait()
                continue
            self._wakeups.wakeup.clear()
            # An outcome recorded while the claim ran (a retry back to pending) may be newer
            # than the claim's snapshot: "nothing ready" only counts if nothing was in flight.
            idle_before = not self._inflight
            limit = min(capacity, s.batch_size, FIRST_CLAIM if idle_before else capacity)
            try:
                claimed, full = await self._claim(intake, limit)
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
                await self._wakeups.sleep_or_wake(delay)
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
                await self._wakeups.sleep_or_wake(
                    self._owed(min(s.poll_interval, SHORT_BATCH_WAIT))
                )
            elif claimed == 0 and not self._inflight:
                if s.burst and idle_before:
                    return
                if s.burst:
                    continue  # claim once more: it sees what was recorded meanwhile
                await self._wakeups.sleep_or_wake(self._owed(await self._idle_timeout()))
            elif claimed == 0:
                # Busy with what we have: claim again when something finishes or on NOTIFY.
                await self._wakeups.progress_or_wakeup(self._owed(s.poll_interval))

    def _owed(self, timeout: float) -> float:
        """``timeout``, or less when a full claim owed after a notification is due sooner."""
        owed = self._floor.owed_in()
        return timeout if owed is None else min(timeout, owed)

    async def _idle_timeout(self) -> float:
        """Sleep until the poll interval, or earlier when a delayed event is due sooner."""
        timeout = self.settings.poll_interval
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                for queue in self._claimable():
                    due = await self._queries.core.next_due(conn, queue, self._event_types)
                    if due is not None:
                        timeout = min(timeout, max(due, 0.0) + 0.001)
        except Exception as exc:
            if not is_transient(exc):
                raise
        return timeout

    def _claimable(self) -> Sequence[str]:
        """Our queues, less those an operator paused (as of the last read, _worker/pauses.py)."""
        paused = self._pauses.paused if self._pauses is not None else frozenset()
        if not paused:
            return self.settings.queues
        return [q for q in self.settings.queues if q not in paused]

    async def _claim(self, intake: Intake, limit: int) -> tuple[int, bool]:
        """Claim from each queue; return (events claimed, whether a queue gave a full batch)."""
        assert self._claim_pool is not None
        s = self.settings
        total, full = 0, False
        async with self._claim_pool.acquire() as conn:
            for queue in self._claimable():
                token = uuid.uuid4()
                rows = await self._queries.core.claim(
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
                intake.dispatch(rows, token, queue)
                total += len(rows)
                full = full or len(rows) == limit
                if total >= limit:
                    break
        return total, full


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=5.0)
    except Exception:
        pool.terminate()
