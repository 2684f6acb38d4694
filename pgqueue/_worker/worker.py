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
from .gate import Gate
from .intake import Intake
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
    runners: Runners | None = None
    limiter: Limiter | None = None
    relays: RelayBatches | None = None
    gates: list[Gate] = dataclasses.field(default_factory=list)  # ordering keys, rate limits


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
        self._intake = Intake(
            registry=registry,
            inflight=self._inflight,
            stats=self.stats,
            wakeups=self._wakeups,
            stopping=lambda: self._shutdown.stopping,
        )
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
            services = await self._build(parts, scheduler)
            # Every service alike: one task each, supervised; runner slots and relay lanes are
            # work pools that the shutdown drains (see _worker/shutdown.py), not services.
            assert parts.runners is not None
            parts.tasks = [
                *parts.runners.start(),
                *(parts.relays.start() if parts.relays else []),
                *(asyncio.create_task(svc.run(), name=f"pgqueue {svc.name}") for svc in services),
            ]
            for task in parts.tasks:
                task.add_done_callback(self._supervise)
            await self._claim_until_stopped()
            await self._shutdown.drain(
                self._intake, parts.runners, parts.limiter, parts.relays, parts.gates
            )
            if parts.limiter is not None:
                await parts.limiter.close()
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

    async def _build(self, parts: _Parts, scheduler: Scheduler | None) -> list[Service]:
        """Build the work pools (runners, limiter, relay lanes) into ``parts``, by name; return
        the background services to start."""
        s = self.settings
        assert self._pool is not None
        if any(not h.is_async for h in self.registry):
            parts.threads = ThreadPool(s.sync_threads)
        parts.runners = runners = Runners(
            concurrency=s.concurrency,
            record=self._intake.record,
            stopping=lambda: self._shutdown.stopping,
            pool=self._handler_pool,
            schema=s.schema_name,
            observer=self.metrics,
            tracing=self._tracing,
            threads=parts.threads,
        )
        completer = Completer(
            pool=self._pool,
            queries=self._queries,
            inflight=self._inflight,
            stats=self.stats,
            on_progress=self._wakeups.progress.set,
            after_error=self._after_error,
            observer=self.metrics,
        )
        parts.limiter = limiter = await self._make_limiter(runners)
        parts.relays = await self._make_relays()
        orderer = self._make_orderer()
        rates = await self._make_rates()
        parts.gates = [g for g in (orderer, rates) if g is not None]
        self._intake.attach(
            runners=runners,
            completer=completer,
            limiter=limiter,
            relays=parts.relays,
            orderer=orderer,
            rates=rates,
        )
        leases = LeaseKeeper(
            pool=self._pool,
            queries=self._queries,
            settings=s,
            inflight=self._inflight,
            stats=self.stats,
            wake=self._wakeups.wakeup.set,
            renew_slots=limiter.renew if limiter else None,
            cancel_runs=runners.cancel_runs,
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
        services: list[Service] = [completer, leases, guard, parts.presence, self._pauses]
        if limiter is not None:
            services.append(limiter)
        services.extend(parts.gates)
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

    async def _claim_until_stopped(self) -> None:
        try:
            await self._claim_loop()
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
        if parts.relays is not None:
            await parts.relays.close()
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

    async def _make_limiter(self, runners: Runners) -> Limiter | None:
        """The slot keeper, when the registry limits a handler (else None: no cost at all)."""
        limits = self.registry.limits
        if not limits:
            return None
        assert self._pool is not None
        limiter = Limiter(
            pool=self._pool,
            queries=self._queries,
            limits=limits,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            submit=runners.submit,
            record=self._intake.record,
        )
        async with self._pool.acquire() as conn:
            log.info("concurrency limits: %s", await limiter.setup(conn))
        return limiter

    def _make_orderer(self) -> Orderer | None:
        """The keeper of key order, when the registry has an ordered handler (else None: no
        cost at all)."""
        ordered = self.registry.ordered
        if not ordered:
            return None
        return Orderer(
            pool=self._pool,
            queries=self._queries.ordering,
            ordered=ordered,
            admit=self._intake.admit_ordered,
            record=self._intake.record,
        )

    async def _make_rates(self) -> RateGate | None:
        """The token taker, when the registry has a rated handler (else None: no cost)."""
        rates = self.registry.rates
        if not rates:
            return None
        gate = RateGate(
            pool=self._pool,
            queries=self._queries.rates,
            per_key={name: per_key for name, (_, per_key) in rates.items()},
            admit=self._intake.admit_rated,
            record=self._intake.record,
        )
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await gate.setup(conn, {name: rate for name, (rate, _) in rates.items()})
        log.info("rate limits: %s", ",".join(f"{n}={r}" for n, (r, _) in sorted(rates.items())))
        return gate

    async def _make_relays(self) -> RelayBatches | None:
        """The batch path of relay handlers, connected (else None: no cost at all)."""
        handlers = [h for h in self.registry if h.relay is not None]
        if not handlers:
            return None
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            source = await source_identity(conn, self.settings.schema_name)
        relays = RelayBatches(
            handlers=handlers,
            source=source,
            batch_size=self.settings.batch_size,
            record=self._intake.record,
            observer=self.metrics,
        )
        try:
            await relays.open(destinations_for(handlers, self.settings.queues))
        except BrokerUnavailable as exc:
            await relays.close()
            raise ConfigurationError(
                f"{exc}; check the URL and that the broker runs (events wait in the outbox)"
            ) from None
        return relays

    async def _close(self) -> None:
        # All at once: each graceful close waits for its server's goodbye (3 pools one after
        # the other were ~9 ms of a 20,000-event burst run's ~450 ms).
        pools = [p for p in (self._handler_pool, self._claim_pool, self._pool) if p is not None]
        await asyncio.gather(*(_close_pool(pool) for pool in pools))

    def _swept(self, queues: Sequence[str]) -> None:
        """After a notification (and its sweep): claim ``queues`` again, reading it all."""
        self._floor.owe_full(queues)
        self._wakeups.wakeup.set()

    async def _claim_loop(self) -> None:
        s = self.settings
        failures = 0
        while not self._shutdown.stopping:
            if self._intake.suspects:
                await self._intake.run_suspects()
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
                claimed, full = await self._claim(limit)
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

    async def _claim(self, limit: int) -> tuple[int, bool]:
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
                self._intake.dispatch(rows, token, queue)
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
