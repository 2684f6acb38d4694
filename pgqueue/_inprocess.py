"""In-process dispatch: the same Registry, no database (unit tests, scripts, notebooks).

:class:`InProcess` mirrors the outbox rather than a plain callback bus: ``publish`` only
records the event (as ``enqueue`` inserts a row), ``drain`` runs what is ready (as a burst
worker does), and ``transaction()`` holds events back until its block succeeds (as a commit
does). Moving to the durable outbox then changes the transport, not the handlers.

What carries over from the worker, by reusing its pure pieces: the payload checks of
``enqueue`` (same error text), pydantic validation of the payload (a mismatch is dead at once,
same error text), fan-out (the handlers of an event run concurrently), each handler's timeout
and :class:`RetryPolicy` (judged by the same ``decide``), ``Discard``, and how an event's
state and ``last_error`` are derived from its handlers.

What differs, on purpose:

- Retries all happen within one ``drain``. Their waits are *compressed* by default: recorded
  in :attr:`HandlerResult.waits` and added to the elapsed time the policy sees (so
  ``stop_after_delay`` behaves as in the worker), but not slept. Pass ``sleep=asyncio.sleep``
  to really wait. A durable retry therefore never leaves an event pending between drains.
- Events run one at a time in ``(run_at, id)`` order (their handlers concurrently), so a test
  sees a deterministic order. The worker promises no order.
- There is no connection pool unless you pass one: ``ctx.pool`` is then a placeholder that
  raises :class:`ConfigurationError` on use, so a handler that needs the database fails with
  a clear error (and :func:`pgqueue.once` cannot be reached). Pass ``pool=`` (an asyncpg pool
  of a migrated database) to run such handlers for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._api import CONSTRAINT_HINTS, Payload, check_event_type, encode_payload
from ._errors import ConfigurationError, PayloadError
from ._models import Context, EventState, HandlerState
from ._names import MAX_IDEMPOTENCY_KEY, MAX_PAYLOAD_BYTES, event_type_ok
from ._registry import Handler, Registry
from ._settings import DEFAULT_QUEUE, DEFAULT_SCHEMA, validate_queue
from ._worker.runner import invalid_text, judge

Sleep = Callable[[float], Awaitable[None]]

# A policy that never stops (tenacity's stop_never) retries for ever in the worker, durably;
# in process that would hang the test, so such a handler ends dead after this many attempts.
DEFAULT_ATTEMPT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """One handler's outcome for one event.

    ``waits`` are the retry waits its policy asked for, in seconds (compressed unless the
    dispatcher sleeps), so a test can assert a backoff schedule.
    """

    state: HandlerState
    attempts: int
    error: str | None = None
    waits: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class EventResult:
    """One event and what became of it: the in-process twin of an ``outbox`` row.

    ``handlers`` holds each handler's result (in process: always; from the database: only
    when the row carries records, i.e. not for events whose handlers all succeeded at once).
    ``error`` is the row's ``last_error``: ``"<handler>: <error>"`` of the first handler that
    has not succeeded, None once the event is done.
    """

    id: int
    event_type: str
    payload: dict[str, Any]
    state: EventState
    queue: str = DEFAULT_QUEUE
    run_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    idempotency_key: str | None = None
    attempt: int = 0
    handlers: Mapping[str, HandlerResult] = field(default_factory=dict)
    error: str | None = None


class _NoPool:
    """``ctx.pool`` in process without a pool: any use says what to do instead."""

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise ConfigurationError(
            f"ctx.pool.{name}: there is no database in process; pass "
            "pgqueue.InProcess(registry, pool=<asyncpg pool of a migrated database>) to run "
            "handlers that use it, or test them against the outbox (pgqueue.testing)"
        )


def _reject(constraint: str) -> PayloadError:
    """The error the database's constraint would have caused (same text as ``enqueue``)."""
    hint = CONSTRAINT_HINTS[constraint]
    return PayloadError(f"event rejected by constraint {constraint}: {hint}")


def _checked(
    event_type: str, payload: Payload, run_at: dt.datetime | None, key: str | None, queue: str
) -> dict[str, Any]:
    """Validate one event like ``enqueue`` and the outbox's constraints; return the payload
    as the handler will see it (decoded from its JSON text, as the worker does).

    The outbox's domains are checked here (their limits live in _names) so that a publish that
    would fail against the database fails in process too, with the same message.
    """
    check_event_type(event_type)
    validate_queue(queue)
    body = encode_payload(payload)
    if not event_type_ok(event_type):
        raise _reject("outbox_event_type_format")
    if len(body.encode()) > MAX_PAYLOAD_BYTES:
        raise _reject("outbox_payload_size")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise _reject("outbox_idempotency_key_length")
    decoded: dict[str, Any] = json.loads(body)
    return decoded


def _aware(moment: dt.datetime) -> dt.datetime:
    # asyncpg reads a naive datetime bound to timestamptz as UTC; so do we.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def fold(
    event: EventResult, handlers: Sequence[Handler], results: Iterable[HandlerResult]
) -> EventResult:
    """The event after its handlers ran: state and ``last_error`` as the worker derives them."""
    by_name = dict(zip((h.name for h in handlers), results, strict=True))
    states = {r.state for r in by_name.values()}
    state = EventState.DEAD if HandlerState.DEAD in states else EventState.DONE
    failing = [(n, r) for n, r in by_name.items() if r.error and r.state is not HandlerState.DONE]
    error = f"{failing[0][0]}: {failing[0][1].error}" if failing else None
    return replace(event, state=state, attempt=event.attempt + 1, handlers=by_name, error=error)


class InProcess:
    """Dispatch events to a :class:`Registry`'s handlers in this process, with no database.

    ``publish`` records an event, ``drain`` runs everything ready and returns the results::

        bus = pgqueue.InProcess(registry)
        event_id = await bus.publish("order.placed", {"order_id": 42})
        [result] = await bus.drain()
        assert result.state == "done"

    ``sleep``: how retry waits are spent (default: not at all, see the module notes; pass
    ``asyncio.sleep`` to honour them). ``pool`` / ``schema``: what handlers get as
    ``ctx.pool`` / ``ctx.schema``. ``attempt_limit`` ends a never-stopping policy.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        pool: Any = None,
        schema: str = DEFAULT_SCHEMA,
        sleep: Sleep | None = None,
        attempt_limit: int = DEFAULT_ATTEMPT_LIMIT,
    ) -> None:
        self.registry = registry
        self._pool = pool if pool is not None else _NoPool()
        self._schema = schema
        self._sleep = sleep
        self._attempt_limit = attempt_limit
        self._ids = itertools.count(1)
        self._events: dict[int, EventResult] = {}
        # The open transaction() blocks of the current task (a transaction belongs to one
        # task, as a database transaction belongs to one connection): one list each.
        self._staged: contextvars.ContextVar[tuple[list[EventResult], ...]] = (
            contextvars.ContextVar("pgqueue_inprocess_transactions", default=())
        )

    # -- producing ----------------------------------------------------------------------------

    async def publish(
        self,
        event_type: str,
        payload: Payload,
        *,
        run_at: dt.datetime | None = None,
        idempotency_key: str | None = None,
        queue: str = DEFAULT_QUEUE,
    ) -> int:
        """Record one event (``enqueue``'s arguments and checks); return its id.

        It runs at the next :meth:`drain` (at or after ``run_at``). With ``idempotency_key``,
        a second publish with the same key records nothing and returns the first event's id.
        Inside :meth:`transaction`, the event exists only once the block succeeds.
        """
        body = _checked(event_type, payload, run_at, idempotency_key, queue)
        if idempotency_key is not None:
            for known in self._visible():
                if known.idempotency_key == idempotency_key:
                    return known.id
        now = dt.datetime.now(dt.UTC)
        event = EventResult(
            id=next(self._ids),
            event_type=event_type,
            payload=body,
            state=EventState.PENDING,
            queue=queue,
            run_at=_aware(run_at) if run_at is not None else now,
            created_at=now,
            idempotency_key=idempotency_key,
        )
        open_blocks = self._staged.get()
        if open_blocks:
            open_blocks[-1].append(event)
        else:
            self._events[event.id] = event
        return event.id

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Hold back the events published in the block until it ends without an exception.

        An exception discards them (their ids are not reused, like a rolled-back sequence);
        nested blocks behave like savepoints. The block belongs to the task that opened it
        (and tasks started inside it, which inherit its context, like sharing a connection):
        other tasks publish outside it.
        """
        committed: list[EventResult] = []
        outer = self._staged.get()
        token = self._staged.set((*outer, committed))
        try:
            yield
        finally:  # on an exception, `committed` is simply forgotten
            self._staged.reset(token)
        if outer:
            outer[-1].extend(committed)
        else:
            self._events.update((e.id, e) for e in committed)

    def _visible(self) -> Iterable[EventResult]:
        yield from self._events.values()
        for staged in self._staged.get():
            yield from staged

    # -- running ------------------------------------------------------------------------------

    async def drain(
        self, *, with_scheduled: bool = False, queues: Sequence[str] | None = None
    ) -> list[EventResult]:
        """Run every ready event (also those published while draining) until none is left.

        Events whose type has no handler stay pending, as with a worker. ``with_scheduled``
        also runs events whose ``run_at`` is still in the future; ``queues`` limits the
        queues served (default: all). Returns the events run, in the order they ran.
        """
        ran: list[EventResult] = []
        while (event := self._next_ready(with_scheduled, queues)) is not None:
            ran.append(await self._run(event))
        return ran

    async def perform(self, event_type: str, payload: Payload, **options: Any) -> EventResult:
        """Publish one event and run it now, whatever its ``run_at``; return its result."""
        if self._staged.get():
            raise RuntimeError(
                "perform() inside transaction(): events run after the block commits; "
                "publish() in the block and drain() after it"
            )
        event_id = await self.publish(event_type, payload, **options)
        event = self._events[event_id]
        if event.state is not EventState.PENDING:  # an idempotency key matched a finished one
            return event
        return await self._run(event)

    def _next_ready(self, with_scheduled: bool, queues: Sequence[str] | None) -> EventResult | None:
        now = dt.datetime.now(dt.UTC)
        ready = [
            e
            for e in self._events.values()
            if e.state is EventState.PENDING
            and self.registry.handlers_for(e.event_type)
            and (queues is None or e.queue in queues)
            and (with_scheduled or e.run_at is None or e.run_at <= now)
        ]
        return min(ready, key=lambda e: (e.run_at, e.id), default=None)

    async def _run(self, event: EventResult) -> EventResult:
        handlers = self.registry.handlers_for(event.event_type)
        # Running, as a claimed row: a drain started meanwhile (by a handler, or another
        # task) does not take it again. A cancelled drain hands it back, like a stopping worker.
        self._events[event.id] = replace(event, state=EventState.RUNNING)
        try:
            results = await asyncio.gather(*(self._run_handler(h, event) for h in handlers))
        except BaseException:
            self._events[event.id] = event
            raise
        done = fold(event, handlers, results)
        self._events[event.id] = done
        return done

    async def _run_handler(self, handler: Handler, event: EventResult) -> HandlerResult:
        try:
            value = handler.parse(event.payload)
        except BaseException as exc:  # a validator may raise anything (see the worker)
            return HandlerResult(HandlerState.DEAD, 1, invalid_text(handler, exc))
        assert event.created_at is not None
        waits: list[float] = []
        last_error: str | None = None
        for attempt in range(1, self._attempt_limit + 1):
            ctx = Context(
                event.id,
                event.event_type,
                handler.name,
                attempt,
                event.created_at,
                self._pool,
                self._schema,
            )
            try:
                async with asyncio.timeout(handler.timeout):
                    await handler(value, ctx)
                return HandlerResult(HandlerState.DONE, attempt, last_error, tuple(waits))
            except BaseException as exc:  # SystemExit, KeyboardInterrupt too, as in the worker
                if isinstance(exc, asyncio.CancelledError) and _being_cancelled():
                    raise
                # Compressed waits still count as time passed, as they would in the worker.
                elapsed = (dt.datetime.now(dt.UTC) - event.created_at).total_seconds()
                verdict, last_error = judge(handler, attempt, elapsed + sum(waits), exc)
                if verdict.dead:
                    return HandlerResult(HandlerState.DEAD, attempt, last_error, tuple(waits))
                waits.append(verdict.delay)
                if self._sleep is not None:
                    await self._sleep(verdict.delay)
        limit = self._attempt_limit
        error = f"in-process attempt limit ({limit}) reached; last error: {last_error}"
        return HandlerResult(HandlerState.DEAD, self._attempt_limit, error, tuple(waits))

    # -- inspecting ---------------------------------------------------------------------------

    def events(
        self, event_type: str | None = None, *, state: EventState | str | None = None
    ) -> list[EventResult]:
        """The committed events (optionally of one type and state), by id."""
        return [
            e
            for e in sorted(self._events.values(), key=lambda e: e.id)
            if (event_type is None or e.event_type == event_type)
            and (state is None or e.state == state)
        ]

    def event(self, event_id: int) -> EventResult:
        """One committed event by id; LookupError when there is none."""
        try:
            return self._events[event_id]
        except KeyError:
            raise LookupError(f"no event {event_id} was published (and committed)") from None


def _being_cancelled() -> bool:
    """True when the running task itself is being cancelled (not a handler's own cancel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
