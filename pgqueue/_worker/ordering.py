"""Ordered handlers: one ordering key's events one at a time, in id order, on every worker.

A handler registered with ``ordered=True`` runs an event that has an ``ordering_key`` only
when no earlier event of that key still waits for this handler. The path of an ordered unit
(an event with a key, and one ordered handler of it):

- the worker plans the event as usual; its other units (unordered handlers) go on at once,
  the ordered ones wait here (:meth:`Orderer.take`);
- the orderer's task asks, for everything waiting, in ONE statement (``HEADS``,
  pgqueue/_queries/ordering.py), which units have an earlier unfinished event of their key;
- a unit without one is its key's head: it goes on (to the concurrency limiter, if any, then
  the runners). The others are recorded ``Kind.DEFERRED``, exactly as a full concurrency limit
  defers them: back to pending, no attempt used. How long: until the blocker is due when it
  waits out a retry; the limiter's backoff (0.25 s doubling to 2 s) while it runs; ``PARKED``
  while it is dead. The trigger of sql/0017 wakes the next event of a key as soon as an event
  of the key leaves 'running' or 'dead', so a key's events follow each other without waiting
  out these delays; the delays are the safety net.

Why this is one at a time across workers without a lock: only the head of (key, handler) may
run, the head is one event, and an event is claimed by one worker at a time (its lease). The
next event becomes the head only once the head's outcome for this handler is committed.
A worker frozen past its lease loses the event to another worker like any event (at least
once): that run and the frozen one may overlap, as they may for every handler.

Why not a claim that skips the events behind a head: the claim is per event, the order per
(key, handler). An event's unordered handlers, and its ordered handlers whose own key order
allows it, must run whatever blocks another handler of the same event (pg-boss #871 and
procrastinate #1599 blocked the whole key or queue instead).

Unordered handlers and events without a key pay nothing: a worker with no ordered handler has
no orderer (one ``is None`` test per event), and a unit is sent here only when its handler is
ordered and the claim found an earlier unfinished event of its key (``ClaimedRow.behind``):
a keyed event with none is its key's head for every handler and runs without a round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._queries.ordering import OrderingQueries
from .._registry import Handler
from .dispatch import Delivery, Outcome
from .gate import Gate
from .limits import defer_delay
from .runner import Unit

# Behind a dead event the key waits for an operator (retry or discard, which wake the next
# event at once through the trigger): a held-back event is looked at again every PARKED
# seconds only, so a blocked key with 10,000 events waiting costs ~330 claims/s, not 5,000.
PARKED = 30.0
# Behind an event waiting out a retry: due a little after it (it runs first, then wakes us).
AFTER_BLOCKER = 0.05


class Orderer(Gate):
    """Holds the ordered units of one worker until their key's order lets them run."""

    name = "orderer"
    what = "looking up ordering keys"

    def __init__(
        self,
        *,
        pool: Any,
        queries: OrderingQueries,
        ordered: dict[str, tuple[str, ...]],
        admit: Callable[[list[Unit]], None],
        record: Callable[[Delivery, Handler, Outcome], None],
    ) -> None:
        super().__init__(pool=pool, admit=admit, record=record)
        self._queries = queries
        self._types = {name: " ".join(types) for name, types in ordered.items()}

    def wants(self, delivery: Delivery, handler: Handler) -> bool:
        """Ordered handlers of keyed events that have an earlier unfinished event of their
        key (the claim says so: ``behind``); any other keyed event is its key's head."""
        return handler.ordered and delivery.row.behind

    async def decide(self, conn: Any, waiting: list[Unit]) -> dict[int, float]:
        """One HEADS statement: the units with an earlier unfinished event of their key wait."""
        held = await self._queries.heads(
            conn,
            [u[0].row.id for u in waiting],
            [u[1].name for u in waiting],
            [self._types[u[1].name] for u in waiting],
            [u[0].row.ordering_key or "" for u in waiting],
        )
        return {i: self._delay(waiting[i], state, due) for i, _, state, due in held}

    def _delay(self, unit: Unit, state: str, due: float) -> float:
        if state == "dead":
            return PARKED
        if state == "pending" and due > 0:
            return min(PARKED, due + AFTER_BLOCKER)
        # Running, or due now: the concurrency limiter's growing backoff.
        delivery, handler, _, _ = unit
        record = (delivery.records or {}).get(handler.name)
        return defer_delay(record.deferred if record is not None else 0)
