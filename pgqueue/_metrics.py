"""Prometheus metrics of one worker, served on ``--metrics-port``.

Why counters in plain dicts and a custom collector, not prometheus_client's Counter and
Histogram: those take a lock and a ``labels()`` lookup per call, and a worker drains ~30,000
handler runs per second (15 us of CPU per event in all). A hook appends one tuple to a buffer;
the event loop folds the buffer into plain dicts and lists every ``FOLD_AT`` observations and
before each scrape; the collector turns them into metric families only when Prometheus
scrapes. Everything lives in this object and its own
``CollectorRegistry`` (never the global default one), so two workers in one process each
serve their own numbers.

Thread safety: prometheus_client serves from its own thread. It reads copies of the dicts
(``dict.copy`` runs in C under the GIL, so it never sees a dict changing size); a scrape that
races a hook may see a histogram's sum one observation ahead of its buckets, nothing worse.

Queue depth comes from the database at scrape time (at most once per ``min_sample_interval``),
through statements that walk the partial indexes and stop at ``depth_limit`` rows.

Labels are event types, handler names, outcomes and queue names only: never ids or payloads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ._errors import ConfigurationError
from ._queries import Queries
from ._settings import DISTRIBUTION

log = logging.getLogger("pgqueue.worker")
# Event types are data (a producer bug can make 100,000 of them): one dead-events series per
# type would flood Prometheus. The types with the most dead events get their own series; the
# rest are summed under OTHER_TYPES, a label no event type can have (parentheses and a space).
DEAD_TYPES = 100
OTHER_TYPES = "(other types)"

# Handler run time: from a millisecond to the 10-minute range of long handlers.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Lag (handler start - created_at): sub-millisecond when idle, up to an hour of backlog.
LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
# Observations buffered before the loop folds them into the counts. Why a buffer: counting in
# place touches a dozen objects per event that are cold in the CPU caches by the time the next
# event comes (measured 1.5 us per handler run in a draining worker, 0.6 us in a tight loop);
# an append touches one hot list, and the fold then runs over hot objects.
FOLD_AT = 4096
SAMPLE_TIMEOUT = 2.0  # seconds a scrape waits for the database before serving old values


@dataclass(slots=True)
class _Handler:
    """Everything counted for one handler of one event type (updated by ``_fold``)."""

    runs: dict[str, int] = field(default_factory=dict)
    durations: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    lags: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    lag_sum: float = 0.0


def _cumulative(bounds: tuple[float, ...], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, as Prometheus wants them."""
    out, running = [], 0
    for bound, count in zip((*bounds, None), counts, strict=True):
        running += count
        out.append(("+Inf" if bound is None else repr(bound), float(running)))
    return out


@dataclass(slots=True)
class _Type:
    """The counts of one event type: event outcomes, and its handlers by name."""

    events: dict[str, int] = field(default_factory=dict)
    handlers: dict[str, _Handler] = field(default_factory=dict)


@dataclass
class _Source:
    """What the worker hands over when it starts: where to read live numbers from."""

    worker_id: str
    pool: Any
    queries: Queries
    queues: Sequence[str]
    in_flight: Callable[[], int]
    loop: asyncio.AbstractEventLoop


class Metrics:
    """Prometheus metrics for one :class:`Worker`; pass it as ``Worker(..., metrics=...)``.

    With ``port`` set, the worker serves ``/metrics`` on ``host:port`` while it runs (port 0
    picks a free port; read it from :attr:`port`). Without, read :attr:`registry` yourself
    (e.g. ``prometheus_client.generate_latest(metrics.registry)``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        depth_limit: int = 100_000,
        min_sample_interval: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.depth_limit = depth_limit
        self.min_sample_interval = min_sample_interval
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._types: dict[str, _Type] = {}
        self._buffer: list[tuple[str, str | None, str, float | None, float | None]] = []
        self._source: _Source | None = None
        self._server: Any = None
        self._sample: tuple[float, list[Any], list[Any], int] | None = None
        self._sample_errors = 0
        self._relays: dict[str, bool] = {}

    # -- hot path (called from the worker's event loop) ------------------------------------------

    def handler_ran(
        self,
        event_type: str,
        handler: str,
        outcome: str,
        started: float | None,
        lag: float | None,
        _monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """One handler run ended (done, retry, dead, interrupted). ``started``: its
        ``time.monotonic()`` at the call (None: the handler was not called); ``lag``: seconds
        from the event's creation to this start (first attempts only)."""
        seconds = None if started is None else _monotonic() - started
        buffer = self._buffer
        buffer.append((event_type, handler, outcome, seconds, lag))
        if len(buffer) >= FOLD_AT:
            self._fold()

    def relay_state(self, relay: str, up: bool) -> None:
        """Whether a relay's broker is reachable (False from an outage's first failed batch
        to the next confirmed one)."""
        self._relays[relay] = up

    def event_recorded(self, event_type: str, outcome: str) -> None:
        """An event's outcome of one claim was written (done, retry, dead, handed_back, ...)."""
        buffer = self._buffer
        buffer.append((event_type, None, outcome, None, None))
        if len(buffer) >= FOLD_AT:
            self._fold()

    def _fold(self, _bisect: Callable[[Sequence[float], float], int] = bisect.bisect_left) -> None:
        """Add the buffered observations to the counts.

        Only ever on the worker's event loop (or when no worker runs), so never at the same
        time as a hook: the buffer needs no lock.
        """
        buffer, self._buffer = self._buffer, []
        types = self._types
        for event_type, handler, outcome, seconds, lag in buffer:
            counts = types.get(event_type)
            if counts is None:
                counts = types[event_type] = _Type()
            if handler is None:
                events = counts.events
                events[outcome] = events.get(outcome, 0) + 1
                continue
            stats = counts.handlers.get(handler)
            if stats is None:
                stats = counts.handlers[handler] = _Handler()
            runs = stats.runs
            runs[outcome] = runs.get(outcome, 0) + 1
            if seconds is not None:
                stats.durations[_bisect(DURATION_BUCKETS, seconds)] += 1
                stats.duration_sum += seconds
            if lag is not None:
                stats.lags[_bisect(LAG_BUCKETS, lag)] += 1
                stats.lag_sum += lag

    # -- lifecycle (called by Worker.run) ----------------------------------------------------------

    async def start(
        self,
        worker_id: str,
        pool: Any,
        queries: Queries,
        queues: Sequence[str],
        in_flight: Callable[[], int],
    ) -> None:
        """Attach to a running worker and, with a port, start serving /metrics."""
        loop = asyncio.get_running_loop()
        self._source = _Source(worker_id, pool, queries, queues, in_flight, loop)
        if self.port is None:
            return
        try:
            self._server, _ = start_http_server(self.port, self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.port} ({exc.strerror or exc}); "
                "pass another --metrics-port (or --metrics-host)"
            ) from None
        self.port = self._server.server_port
        log.info(
            "serving Prometheus metrics on http://%s:%d/metrics",
            self.host,
            self.port,
            extra={"metrics_port": self.port},
        )

    async def stop(self) -> None:
        """Stop serving (a scrape in progress gets its answer) and detach from the worker."""
        server, self._server = self._server, None
        if server is not None:
            # In a thread: shutdown waits for a scrape that may be waiting on this loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
        self._fold()
        self._source = None

    # -- scrape (prometheus_client's thread) --------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Build every metric family from the current numbers (the Collector protocol)."""
        self._refresh()
        source = self._source
        info = InfoMetricFamily("pgqueue_worker", "The worker serving these metrics.")
        info.add_metric(
            [], {"worker_id": source.worker_id if source else "", "version": _version()}
        )
        yield info
        yield from self._counters()
        yield from self._histograms()
        in_flight = GaugeMetricFamily(
            "pgqueue_in_flight_events", "Events this worker has claimed and not yet recorded."
        )
        in_flight.add_metric([], source.in_flight() if source else 0)
        yield in_flight
        if self._relays:
            up = GaugeMetricFamily(
                "pgqueue_relay_broker_up",
                "1 while a relay's broker confirms messages, 0 during an outage (its events "
                "are deferred without spending attempts: pgqueue_handler_runs outcome deferred).",
                labels=["relay"],
            )
            for relay, state in sorted(self._relays.copy().items()):
                up.add_metric([relay], 1.0 if state else 0.0)
            yield up
        yield from self._queue_families()

    def _counters(self) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "pgqueue_events",
            "Event outcomes written by this worker, one per claim: done, retry (rescheduled), "
            "dead, handed_back (shutdown), lease_lost, cancelled (by an operator while it ran).",
            labels=["event_type", "outcome"],
        )
        for event_type, counts in self._counts():
            for outcome, n in sorted(counts.events.copy().items()):
                events.add_metric([event_type, outcome], n)
        runs = CounterMetricFamily(
            "pgqueue_handler_runs",
            "Handler runs by outcome: done, retry (failed, will run again), dead, interrupted, "
            "cancelled (its event was cancelled by an operator).",
            labels=["event_type", "handler", "outcome"],
        )
        for (event_type, handler), stats in self._handler_stats():
            for outcome, n in sorted(stats.runs.copy().items()):
                runs.add_metric([event_type, handler, outcome], n)
        errors = CounterMetricFamily(
            "pgqueue_queue_sample_errors", "Scrapes whose database sample failed or timed out."
        )
        errors.add_metric([], self._sample_errors)
        return [events, runs, errors]

    def _histograms(self) -> Iterable[Metric]:
        duration = HistogramMetricFamily(
            "pgqueue_handler_duration_seconds",
            "Time a handler call took (each attempt).",
            labels=["event_type", "handler"],
        )
        lags: dict[str, tuple[list[int], float]] = {}
        for (event_type, handler), stats in self._handler_stats():
            if sum(stats.durations):
                buckets = _cumulative(DURATION_BUCKETS, stats.durations[:])
                duration.add_metric([event_type, handler], buckets, stats.duration_sum)
            counts, total = lags.get(event_type, ([0] * (len(LAG_BUCKETS) + 1), 0.0))
            lags[event_type] = ([a + b for a, b in zip(counts, stats.lags, strict=True)],
                                total + stats.lag_sum)  # fmt: skip
        lag = HistogramMetricFamily(
            "pgqueue_lag_seconds",
            "Handler start minus the event's created_at (each handler's first attempt; "
            "database clock).",
            labels=["event_type"],
        )
        for event_type, (counts, total) in sorted(lags.items()):
            if sum(counts):
                lag.add_metric([event_type], _cumulative(LAG_BUCKETS, counts), total)
        return [duration, lag]

    def _counts(self) -> list[tuple[str, _Type]]:
        # dict.copy() runs in C under the GIL: the worker's thread never changes it mid-copy.
        return sorted(self._types.copy().items(), key=lambda item: item[0])

    def _handler_stats(self) -> list[tuple[tuple[str, str], _Handler]]:
        return [
            ((event_type, name), stats)
            for event_type, counts in self._counts()
            for name, stats in sorted(counts.handlers.copy().items(), key=lambda item: item[0])
        ]

    def _queue_families(self) -> Iterable[Metric]:
        queues, dead, held = self._sample[1:] if self._sample is not None else ([], [], 0)
        limit = f" (counted up to {self.depth_limit})"
        ready = GaugeMetricFamily(
            "pgqueue_queue_ready_events", "Pending events that are due" + limit, labels=["queue"]
        )
        scheduled = GaugeMetricFamily(
            "pgqueue_queue_scheduled_events",
            "Pending events due later (delayed, or waiting for a retry)" + limit,
            labels=["queue"],
        )
        oldest = GaugeMetricFamily(
            "pgqueue_queue_oldest_ready_age_seconds",
            "Age of the longest-waiting due event (0 when none).",
            labels=["queue"],
        )
        for row in queues:
            ready.add_metric([row["queue"]], row["ready"])
            scheduled.add_metric([row["queue"]], row["scheduled"])
            oldest.add_metric([row["queue"]], row["oldest_ready_age"] or 0.0)
        dead_events = GaugeMetricFamily(
            "pgqueue_dead_events", "Dead events in the outbox" + limit, labels=["event_type"]
        )
        ranked = sorted(dead, key=lambda row: (-row["events"], row["event_type"]))
        for row in ranked[:DEAD_TYPES]:
            dead_events.add_metric([row["event_type"]], row["events"])
        if len(ranked) > DEAD_TYPES:
            rest = sum(row["events"] for row in ranked[DEAD_TYPES:])
            dead_events.add_metric([OTHER_TYPES], rest)
        held_back = GaugeMetricFamily(
            "pgqueue_ordering_held_back_keys",
            "Ordering keys held back by a dead or retrying event" + limit,
        )
        held_back.add_metric([], held)
        return [ready, scheduled, oldest, dead_events, held_back]

    def _refresh(self) -> None:
        """Fold the buffered observations, and read the database when the sample is older
        than ``min_sample_interval``; both on the worker's loop while it runs."""
        source = self._source
        if source is None:  # no worker running: nothing else touches the buffer
            self._fold()
            return
        with contextlib.suppress(RuntimeError):  # RuntimeError: no loop in this thread
            if asyncio.get_running_loop() is source.loop:
                # Read from the worker's own thread (in-process use): we cannot wait for the
                # loop we are running on, so the counts only, with the last database sample.
                self._fold()
                return
        future = asyncio.run_coroutine_threadsafe(self._on_loop(source), source.loop)
        try:
            future.result(SAMPLE_TIMEOUT)
        except Exception as exc:  # the worker is busy or the database is away: old values
            future.cancel()
            self._sample_errors += 1
            log.debug("metrics: refresh failed (%s)", type(exc).__name__)

    async def _on_loop(self, source: _Source) -> None:
        self._fold()
        now = time.monotonic()
        if self._sample is None or now - self._sample[0] >= self.min_sample_interval:
            self._sample = (now, *await self._read(source))

    async def _read(self, source: _Source) -> tuple[list[Any], list[Any], int]:
        async with source.pool.acquire() as conn:
            queues = await source.queries.admin.queue_depths(conn, source.queues, self.depth_limit)
            dead = await source.queries.admin.dead_counts(conn, self.depth_limit)
            held = await source.queries.ordering.blocked_count(conn, self.depth_limit)
        return queues, dead, held


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"
