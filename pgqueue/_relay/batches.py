"""The worker side of relays: the batch path.

The intake hands every relay unit of a claim here instead of to the runners. Each relay has
one lane (a queue of units and one task): the task takes up to ``batch_size`` units, builds
their messages (the payload is the claimed row's JSON text, passed through), publishes them
pipelined, waits for every confirm, and records one outcome per unit through the intake's
``record`` (so the completer writes them with the rest of the claim, fenced by lease):

- confirmed -> done;
- refused (unroutable, nacked, rejected) -> a failed attempt, judged by the relay handler's
  retry policy like any handler's (durable retry or dead);
- broker unavailable (no connection, no confirm in time) -> deferred: back to pending after
  the breaker's delay with no attempt spent, so an outage of any length sends nothing dead.

Why not a handler run per event: at ~50-80 us of client code per awaited publish, one worker
relayed 11-14k events/s to NATS and 2-3k to RabbitMQ (research/relay.md 3b); a batch pays the
per-message client cost only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._backoff import decide
from .._registry import Handler
from .._worker.dispatch import Delivery, Kind, Outcome, error_text
from .base import Breaker, BrokerUnavailable, Relay, RelayMessage, iso_utc, trace_context

if TYPE_CHECKING:
    from .._metrics import Metrics
    from .._worker.runner import Unit

log = logging.getLogger("pgqueue.relay")


@dataclass
class _Lane:
    """One relay's queue of units and the service that publishes them (a worker service like
    any other: a ``name`` and a ``run()`` that works until cancelled)."""

    relay: Relay
    handler: str  # the relay handler's name, in log lines and metrics
    breaker: Breaker
    publish: Callable[[_Lane, list[Unit]], Awaitable[None]]
    batch_size: int
    units: deque[Unit] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    busy: list[Unit] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None

    @property
    def name(self) -> str:
        """The service's name (its task's name)."""
        return f"relay lane {self.handler}"

    async def run(self) -> None:
        """Publish the queued units, a batch at a time, until cancelled (by the worker, or by
        :meth:`RelayBatches.cancel`). A publish never raises: what the broker refused or
        could not take is recorded per unit, so there is nothing to back off from here."""
        self.task = asyncio.current_task()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.units:
                n = min(self.batch_size, len(self.units))
                self.busy = [self.units.popleft() for _ in range(n)]
                await self.publish(self, self.busy)
                self.busy = []


class RelayBatches:
    """One lane per relay of the registry; see the module docstring."""

    def __init__(
        self,
        *,
        handlers: Iterable[Handler],
        source: str,
        batch_size: int,
        record: Callable[[Delivery, Handler, Outcome], None],
        observer: Metrics | None = None,
    ) -> None:
        self.source = source
        self._batch_size = batch_size
        self._record = record
        self._observer = observer
        self._lanes: dict[int, _Lane] = {}
        for h in handlers:
            if h.relay is not None and id(h.relay) not in self._lanes:
                self._lanes[id(h.relay)] = _Lane(
                    h.relay, h.name, Breaker(h.name), self._publish, batch_size
                )

    @property
    def lanes(self) -> list[_Lane]:
        """Every relay's lane: the worker starts each as a service."""
        return list(self._lanes.values())

    async def open(self, destinations: Callable[[Relay], list[str]]) -> None:
        """Connect every relay and log its broker's durability; a broker that cannot be
        reached at start is an error (a wrong URL must not look like an outage)."""
        for lane in self._lanes.values():
            await lane.relay.open()
            lines = await lane.relay.durability(destinations(lane.relay))
            log.info(
                "relay %s -> %s (%s); dedupe ids %s:<event id>",
                lane.handler,
                lane.relay.where,
                lane.relay.kind,
                self.source,
                extra={"relay": lane.handler},
            )
            for line in lines:
                warn = line.startswith("WARNING: ")
                log.log(
                    logging.WARNING if warn else logging.INFO,
                    "relay %s: %s",
                    lane.handler,
                    line.removeprefix("WARNING: "),
                    extra={"relay": lane.handler, "event": "relay_durability"},
                )
            self._report(lane)

    def take(self, units: list[Unit]) -> list[Unit]:
        """Keep the relay units (queued on their lanes); return the others."""
        rest: list[Unit] = []
        for unit in units:
            relay = unit[1].relay
            if relay is None:
                rest.append(unit)
                continue
            lane = self._lanes[id(relay)]
            lane.units.append(unit)
            lane.wake.set()
        return rest

    async def cancel(self) -> None:
        """Stop every lane: what was queued or publishing is recorded as interrupted (handed
        back, attempt refunded; a message the broker got meanwhile is deduped later)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            for d, h, prior, _ in [*lane.busy, *lane.units]:
                if not d.completed and h.name not in d.outcomes:
                    self._record(d, h, Outcome(Kind.INTERRUPTED, prior))
            lane.busy.clear()
            lane.units.clear()

    async def close(self) -> None:
        """Disconnect every relay."""
        await asyncio.gather(*(lane.relay.close() for lane in self._lanes.values()))

    async def _publish(self, lane: _Lane, batch: list[Unit]) -> None:
        now = time.monotonic()
        if not lane.breaker.allows(now):
            self._defer(lane, batch, now)
            return
        relay = lane.relay
        messages = [self._message(relay, d) for d, _, _, _ in batch]
        started = time.monotonic()
        try:
            results = await relay.publish(messages)
        except BrokerUnavailable as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # a client error we did not foresee: a failed attempt each
            log.warning("relay %s: publish failed: %s", lane.handler, error_text(exc), exc_info=exc)
            results = [exc] * len(batch)
        now = time.monotonic()
        unavailable = [
            u for u, r in zip(batch, results, strict=True) if isinstance(r, BrokerUnavailable)
        ]
        if unavailable:
            error = next(r for r in results if isinstance(r, BrokerUnavailable))
            assert error is not None
            lane.breaker.failed(now, error)
            self._defer(lane, unavailable, now)
        elif lane.breaker.down_since is not None:
            lane.breaker.succeeded(now)
        self._report(lane)
        for unit, result in zip(batch, results, strict=True):
            if isinstance(result, BrokerUnavailable):
                continue
            d, h, prior, _ = unit
            attempts = prior + 1
            if result is None:
                self._ran(d, h, "done", started, attempts)
                self._record(d, h, Outcome(Kind.DONE, attempts))
            else:
                self._record(d, h, self._failed(lane, d, h, attempts, result, started))

    def _message(self, relay: Relay, d: Delivery) -> RelayMessage:
        row = d.row
        return RelayMessage(
            msg_id=f"{self.source}:{row.id}",
            event_id=row.id,
            event_type=row.event_type,
            queue=d.queue,
            created_at=iso_utc(row.created_at),
            payload=row.payload,
            trace=trace_context(row.headers),
            destination=relay.destination(row.event_type, d.queue),
            ordering_key=row.ordering_key,
        )

    def _defer(self, lane: _Lane, units: list[Unit], now: float) -> None:
        for d, h, prior, _ in units:
            record = d.records.get(h.name) if d.records else None
            delay = lane.breaker.defer_delay(now, record.deferred if record else 0)
            self._ran(d, h, "deferred", None, prior)
            self._record(d, h, Outcome(Kind.DEFERRED, prior, None, delay))

    def _failed(
        self,
        lane: _Lane,
        d: Delivery,
        h: Handler,
        attempts: int,
        exc: BaseException,
        started: float,
    ) -> Outcome:
        text = error_text(exc)
        verdict = decide(h.policy, attempts, d.elapsed, exc)
        fields = {
            "event_id": d.row.id,
            "event_type": d.row.event_type,
            "handler": h.name,
            "attempt": attempts,
            "error": type(exc).__name__,
        }
        if verdict.dead:
            self._ran(d, h, "dead", started, attempts)
            log.warning(
                "event %d relay %s is dead after %d attempt(s): %s",
                d.row.id, lane.handler, attempts, text, extra=fields,
            )  # fmt: skip
            return Outcome(Kind.DEAD, attempts, text)
        self._ran(d, h, "retry", started, attempts)
        log.info(
            "event %d relay %s failed (attempt %d, %s); retrying in %.1fs",
            d.row.id, lane.handler, attempts, text, verdict.delay, extra=fields,
        )  # fmt: skip
        return Outcome(Kind.RETRY, attempts, text, verdict.delay)

    def _ran(
        self, d: Delivery, h: Handler, outcome: str, started: float | None, attempts: int
    ) -> None:
        if self._observer is None:
            return
        lag = None
        if started is not None and attempts == 1:
            lag = d.row.age + (started - d.claimed_at)
        self._observer.handler_ran(d.row.event_type, h.name, outcome, started, lag)

    def _report(self, lane: _Lane) -> None:
        if self._observer is not None:
            self._observer.relay_state(lane.handler, lane.breaker.up)


def destinations_for(
    handlers: Iterable[Handler], queues: Iterable[str]
) -> Callable[[Relay], list[str]]:
    """For the start-up check: every destination a relay may publish to in this worker."""
    pairs = [(h, q) for h in handlers if h.relay is not None for q in queues]

    def of(relay: Relay) -> list[str]:
        out: list[str] = []
        for h, q in pairs:
            if h.relay is relay:
                dest = relay.destination(h.event_type, q)
                if dest not in out:
                    out.append(dest)
        return out

    return of
