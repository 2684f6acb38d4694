"""From claim to completion: what happens to each claimed event in this worker.

The intake tracks claimed events in flight, sets aside suspects (events whose earlier claim
never wrote back) to run them alone, plans each event's handlers and queues them for the
runners (or the limiter), records each handler's outcome and hands a finished event to the
completer. It also hands events back unrun (attempt refunded), for the shutdown.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .._models import WorkerStats
from .._queries import ClaimedRow
from .._registry import Handler, Registry
from .._relay.batches import RelayBatches
from .completer import Completer
from .dispatch import (
    Delivery,
    Kind,
    Outcome,
    error_text,
    finish,
    lost_claims,
    parse_records,
    plan,
    unrecorded,
)
from .limits import Limiter
from .ordering import Orderer
from .rates import RateGate
from .runner import Runners, Unit
from .wakeups import Wakeups

log = logging.getLogger("pgqueue.worker")

# The payload is jsonb's own output: one JSON object, no surrounding whitespace, so the
# decoder's scanner reads it directly. json.loads wraps the same scanner in type checks and
# two whitespace regex matches per call (~0.5 us of the worker's ~11 us per event).
_raw_decode = json.JSONDecoder().raw_decode


def decode_payload(text: str) -> object:
    """Decode a payload as PostgreSQL returns it (raises ValueError on anything else)."""
    value, end = _raw_decode(text)
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


@dataclass(frozen=True)
class Route:
    """The parts the intake hands work to; each reports back to the intake that built it.

    ``runners`` always; a gate or the relay lanes only when some handler needs them (None
    costs nothing on the way: an event whose handlers need no gate goes straight on).
    """

    runners: Runners
    limiter: Limiter | None = None  # some handler has a concurrency limit
    relays: RelayBatches | None = None  # some handler is a relay
    orderer: Orderer | None = None  # some handler is ordered
    rates: RateGate | None = None  # some handler has a rate


class Intake:
    """Takes claimed rows in and sees each event through to its completion.

    ``inflight`` (event id -> delivery) is shared with the completer, which removes an event
    once its outcome is written, and with the lease keeper. ``stopping`` tells whether the
    worker is shutting down. ``route`` builds the parts the intake hands work to; they report
    back to it (:meth:`record`, :meth:`admit_ordered`, :meth:`admit_rated`), so the intake
    calls ``route`` with itself while it is being built: one step, and no part is ever
    missing. ``route`` may keep the intake's methods but must not call them yet.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        inflight: dict[int, Delivery],
        stats: WorkerStats,
        wakeups: Wakeups,
        stopping: Callable[[], bool],
        completer: Completer,
        route: Callable[[Intake], Route],
    ) -> None:
        # The handlers per type, fixed for this run (and looked up twice per event).
        self._handlers = {t: registry.handlers_for(t) for t in registry.event_types}
        self.inflight = inflight
        self.suspects: deque[Delivery] = deque()
        self._stats = stats
        self._wakeups = wakeups
        self._stopping = stopping
        self._completer = completer
        self.route = route(self)
        # Copied out: the hot path reads them once or twice per event.
        self._runners = self.route.runners
        self._limiter = self.route.limiter
        self._relays = self.route.relays
        self._orderer = self.route.orderer
        self._rates = self.route.rates
        self._ungated = self._orderer is None and self._rates is None and self._limiter is None

    # The gates a unit passes, in this order: its key's order (orderer), its handler's rate
    # (rates), its handler's concurrency (limiter); each keeps what it must decide on and
    # hands the rest on. A gate that decides later hands its units to the next one through
    # admit_ordered / admit_rated.

    def _gated(
        self, delivery: Delivery, units: list[tuple[Handler, int]], payload: object
    ) -> list[Unit]:
        if self._orderer is not None:
            units = [(h, p) for _, h, p, _ in self._orderer.take(delivery, units, payload)]
        return self._after_order(delivery, units, payload)

    def _after_order(
        self, delivery: Delivery, units: list[tuple[Handler, int]], payload: object
    ) -> list[Unit]:
        if self._rates is not None:
            units = [(h, p) for _, h, p, _ in self._rates.take(delivery, units, payload)]
        return self._after_rate(delivery, units, payload)

    def _after_rate(
        self, delivery: Delivery, units: list[tuple[Handler, int]], payload: object
    ) -> list[Unit]:
        if self._limiter is not None:
            # Limited handlers wait for a slot (the limiter starts or defers them).
            units = self._limiter.take(delivery, units, payload)
        return [(delivery, h, prior, payload) for h, prior in units]

    def admit_ordered(self, units: list[Unit]) -> None:
        """Units whose ordering key lets them run (from the orderer): on through the rate
        and concurrency limits to the runners."""
        out: list[Unit] = []
        for delivery, handler, prior, payload in units:
            out += self._after_order(delivery, [(handler, prior)], payload)
        self._submit(out)

    def admit_rated(self, units: list[Unit]) -> None:
        """Units that got a rate token: on through the concurrency limit to the runners."""
        out: list[Unit] = []
        for delivery, handler, prior, payload in units:
            out += self._after_rate(delivery, [(handler, prior)], payload)
        self._submit(out)

    def dispatch(self, rows: list[ClaimedRow], token: uuid.UUID, queue: str = "default") -> None:
        """Take in the rows of one claim from ``queue`` (under lease ``token``): start them
        or set aside."""
        now = time.monotonic()
        self._stats.claimed += len(rows)
        units: list[Unit] = []  # handed to the runners at once: one wake-up per claim
        for row in rows:
            delivery = Delivery(row, token, now, parse_records(row.handlers), queue=queue)
            older = self.inflight.get(row.id)
            if older is not None:
                # We lost this event's lease while running it and claimed it again: the old
                # run's outcome will be refused; stop its in-process retries.
                older.lost = True
            self.inflight[row.id] = delivery
            if lost_claims(delivery):
                self.suspects.append(delivery)
            else:
                self._plan(delivery, units)
        self._submit(units)
        # Hold one suspect at a time: one waiting in our hands would lose an attempt too if the
        # one running kills us. The others go back to pending at once, attempt refunded.
        while len(self.suspects) > 1:
            self.hand_back(self.suspects.pop())

    def start(self, delivery: Delivery) -> None:
        """Plan an event's handlers and queue them for the runners."""
        units: list[Unit] = []
        self._plan(delivery, units)
        self._submit(units)

    def _submit(self, units: list[Unit]) -> None:
        if units:
            if self._relays is not None:  # relay units go to the batch path
                units = self._relays.take(units)
            self._runners.submit(units)

    def _plan(self, delivery: Delivery, out: list[Unit]) -> None:
        """Plan an event's handlers; append the units to run to ``out``."""
        row = delivery.row
        handlers = self._handlers[row.event_type]
        units = plan(delivery, handlers)
        if units:
            try:
                payload = decode_payload(row.payload)
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
                self.complete(delivery)
                return
            if self._ungated:  # no gate at all: as cheap as before gates existed
                out.extend((delivery, h, prior, payload) for h, prior in units)
            else:
                out.extend(self._gated(delivery, units, payload))
        else:
            self.complete(delivery)

    def hand_back(self, delivery: Delivery) -> None:
        """Give back a claimed event without running it: its attempt is refunded."""
        units = plan(delivery, self._handlers[delivery.row.event_type])
        if not units:
            self.complete(delivery)
        for handler, prior in units:
            self.interrupted(delivery, handler, prior)

    def hand_back_unrecorded(self) -> None:
        """Once the runners are stopped: hand back every event still waiting for an outcome
        that no runner will record (its runner ended on a bug of ours: a fatal stop), so it
        is not left to its lease."""
        for delivery in list(self.inflight.values()):
            if delivery.completed:
                continue
            rest = unrecorded(delivery, self._handlers[delivery.row.event_type])
            delivery.waiting = len(rest)
            if not rest:
                self.complete(delivery)
            for handler, prior in rest:
                self.interrupted(delivery, handler, prior)

    async def run_suspects(self) -> None:
        """Run events whose earlier claim never wrote back, one at a time, alone.

        Such an event may be the one that killed a worker (attempts count at claim, so every
        event that worker held lost one). Running it alone, after everything else in flight
        is recorded, means that if it kills this worker too, no innocent event pays for it.
        """
        while self.suspects and not self._stopping():
            suspect = self.suspects[0]
            await self._wait_until(lambda: len(self.inflight) <= len(self.suspects))
            if self._stopping():
                return
            self.suspects.popleft()
            self.start(suspect)
            await self._wait_until(self._recorded(suspect))

    def _recorded(self, delivery: Delivery) -> Callable[[], bool]:
        event_id = delivery.row.id
        return lambda: self.inflight.get(event_id) is not delivery

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition() and not self._stopping():
            await self._wakeups.progress_or_wakeup()

    def interrupted(self, delivery: Delivery, handler: Handler, prior: int) -> None:
        """Record a unit that did not run (or was cancelled): handed back, attempt refunded."""
        self.record(delivery, handler, Outcome(Kind.INTERRUPTED, prior))

    def record(self, d: Delivery, handler: Handler, outcome: Outcome) -> None:
        """Record one handler's outcome; complete the event when it was the last."""
        if self._limiter is not None and handler.concurrency is not None:
            self._limiter.release(d, handler)  # it finished: its slot goes back at once
        d.outcomes[handler.name] = outcome
        d.waiting -= 1
        if d.waiting == 0:
            self.complete(d)

    def complete(self, d: Delivery) -> None:
        """Hand a finished event to the completer."""
        d.completed = True
        completion = finish(d, self._handlers[d.row.event_type])
        self._completer.add(completion)
