"""Running (event, handler) units: ``concurrency`` long-lived tasks and one timeout watchdog.

Why not a task per unit and ``asyncio.timeout`` per call: both cost a few microseconds per
handler (task creation, a timer handle pushed on and cancelled off the loop's heap), which
at tens of thousands of handler runs per second is a large share of a core. Long-lived runner
tasks pull units from one deque, and a single watchdog cancels a runner whose handler is
past its deadline (precision: ``WATCHDOG_TICK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .._backoff import Verdict, decide
from .._models import Context, new_context
from .._registry import Handler
from .dispatch import MAX_ERROR_CHARS, Delivery, Kind, Outcome, error_text

if TYPE_CHECKING:
    from .._metrics import Metrics
    from .._tracing import Tracing
    from .threads import ThreadPool

log = logging.getLogger("pgqueue.worker")

Unit = tuple[Delivery, Handler, int, Any]  # delivery, handler, prior attempts, decoded payload
WATCHDOG_TICK = 0.05
# A runner whose handlers never suspend (quick, CPU-only) would run a whole claimed batch
# without giving the loop back: the completer could not send its statement until the batch
# ended, nor the heartbeat or the claim loop run. Yielding every 64 units lets PostgreSQL
# record outcomes while the rest of the batch runs (20k drain +2-4%; 16 and 256 no better).
YIELD_EVERY = 64


def validation_text(handler: Handler, exc: ValidationError) -> str:
    """A one-line validation error naming fields, never values (they may be personal data)."""
    model = handler.model.__name__ if handler.model else "payload"
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
    )
    return f"ValidationError: payload does not match {model}: {problems}"


def invalid_text(handler: Handler, exc: BaseException) -> str:
    """The error stored when the payload model refused the payload or raised while trying.

    pydantic wraps only ValueError and AssertionError from validators into a ValidationError;
    anything else (a validator's RuntimeError, TypeError, KeyError, even SystemExit) comes out
    as itself, and is just as permanent: the same payload fails the same way every time.
    """
    if isinstance(exc, ValidationError):
        return validation_text(handler, exc)
    model = handler.model.__name__ if handler.model else "payload"
    return f"{error_text(exc)} (raised while validating the payload as {model})"


# A handler that returns this much past its timeout without the watchdog having cancelled
# it blocked the event loop (the watchdog could not run); an awaiting one is cancelled within
# WATCHDOG_TICK.
BLOCKED_SLACK = 1.0


class LoopBlocked(TimeoutError):
    """A handler ran past its timeout by blocking the event loop (see _worker/stallguard.py)."""

    def __init__(self, handler: Handler, seconds: float) -> None:
        super().__init__(
            f"handler {handler.name} blocked the event loop for {seconds:.1f}s, past its "
            f"timeout of {handler.timeout:g}s (blocking calls in an async handler: run them "
            "with asyncio.to_thread)"
        )


def failure_text(handler: Handler, exc: BaseException) -> str:
    """The error stored for a failed attempt."""
    if isinstance(exc, LoopBlocked):
        return error_text(exc)
    if isinstance(exc, TimeoutError):
        return f"TimeoutError: handler exceeded its timeout of {handler.timeout:g}s"
    return error_text(exc)


def judge(
    handler: Handler, attempts: int, elapsed: float, exc: BaseException
) -> tuple[Verdict, str]:
    """The verdict on a failed attempt and the error to store. The handler's retry policy is
    its own code (tenacity callbacks): if it raises, the handler is dead, with both errors."""
    text = failure_text(handler, exc)
    try:
        return decide(handler.policy, attempts, elapsed, exc), text
    except Exception as policy_exc:
        text = f"{text}; its retry policy raised {error_text(policy_exc)}"
        return Verdict(dead=True), text[:MAX_ERROR_CHARS]


class Runners:
    """Runs units on ``concurrency`` tasks and reports each outcome to ``record``."""

    def __init__(
        self,
        *,
        concurrency: int,
        record: Callable[[Delivery, Handler, Outcome], None],
        stopping: Callable[[], bool],
        pool: Any,
        schema: str,
        observer: Metrics | None = None,
        tracing: Tracing | None = None,
        threads: ThreadPool | None = None,
    ) -> None:
        self.units: deque[Unit] = deque()
        self._threads = threads  # for plain-def handlers (None when the registry has none)
        # Both optional; None costs one `is None` test per handler run.
        self._observer = observer
        self._tracing = tracing
        self._record = record
        self._stopping = stopping
        self._pool = pool
        self._schema = schema
        # One future per idle runner: a submit wakes only as many runners as it has units
        # (one shared Event woke all of them, ~100 task switches per small batch).
        self._idle: deque[asyncio.Future[None]] = deque()
        self._deadlines = [math.inf] * concurrency
        self._timed_out = [False] * concurrency
        self._started = [0.0] * concurrency  # loop time each slot's current call started
        # The delivery each slot is running, and whether an operator's cancel of its event
        # cancelled the slot's task (see cancel_runs).
        self._current: list[Delivery | None] = [None] * concurrency
        self._cancelled = [False] * concurrency
        self.tasks: list[asyncio.Task[None]] = []
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> list[asyncio.Task[None]]:
        """Start the runner tasks and the watchdog; return every task started."""
        self.tasks = [asyncio.create_task(self._run(i)) for i in range(len(self._deadlines))]
        self._watchdog = asyncio.create_task(self._watch())
        return [*self.tasks, self._watchdog]

    def submit(self, units: Iterable[Unit]) -> None:
        """Queue units and wake idle runners."""
        before = len(self.units)
        self.units.extend(units)
        wanted = len(self.units) - before
        idle = self._idle
        while wanted > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled runner leaves a done future behind
                waiter.set_result(None)
                wanted -= 1

    async def cancel(self) -> None:
        """Cancel every runner: the unit each was running is recorded as interrupted."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def cancel_runs(self) -> int:
        """Cancel the handler calls of deliveries marked ``cancelled`` (an operator cancelled
        their event); return how many calls. Units of theirs not yet started are skipped when
        a runner takes them. Like a timeout, a sync handler's thread runs on to its end: only
        the await on it is cancelled."""
        hit = 0
        for slot, d in enumerate(self._current):
            if d is not None and d.cancelled and not self._cancelled[slot]:
                self._cancelled[slot] = True
                self.tasks[slot].cancel()
                hit += 1
        return hit

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        deadlines, timed_out = self._deadlines, self._timed_out
        while True:
            await asyncio.sleep(WATCHDOG_TICK)
            now = loop.time()
            for i, deadline in enumerate(deadlines):
                if deadline < now and not timed_out[i]:
                    timed_out[i] = True
                    self.tasks[i].cancel()

    async def _run(self, slot: int) -> None:
        units = self.units
        loop = asyncio.get_running_loop()
        while True:
            ran = 0
            while units:
                delivery, handler, prior, payload = units.popleft()
                if delivery.cancelled:
                    self._cancelled_unit(delivery, handler, prior)
                    continue
                self._current[slot] = delivery
                try:
                    await self._run_unit(slot, delivery, handler, prior, payload)
                finally:
                    self._current[slot] = None
                if self._cancelled[slot]:
                    await self._absorb_cancel(slot)
                ran += 1
                if ran % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle.append(waiter)
            await waiter

    async def _run_unit(
        self, slot: int, d: Delivery, handler: Handler, prior: int, payload: Any
    ) -> None:
        outcome: Outcome | None = None
        attempts = prior
        last_error: str | None = None
        loop = asyncio.get_running_loop()
        try:
            try:
                value = handler.parse(payload)
            except BaseException as exc:  # parse is synchronous: never a cancel
                outcome = self._invalid(d, handler, prior + 1, exc)
            while outcome is None:
                attempts += 1
                ctx = new_context(
                    d.row.id,
                    d.row.event_type,
                    handler.name,
                    attempts,
                    d.row.created_at,
                    self._pool,
                    self._schema,
                )
                started = 0.0 if self._observer is None else time.monotonic()
                try:
                    await self._call(slot, loop, handler, value, ctx, d.row.headers)
                    if self._observer is not None:
                        self._report(d, handler, "done", started, attempts)
                    # A success after quick retries keeps the last error for the record.
                    outcome = Outcome(Kind.DONE, attempts, last_error)
                except BaseException as exc:
                    # Every BaseException a handler raises is a failure of that handler: a
                    # custom one, SystemExit (sys.exit, or argparse/click refusing input) and
                    # KeyboardInterrupt included. Only signals stop the worker, and those reach
                    # it through the loop's signal handlers, never as a handler's exception.
                    if isinstance(exc, asyncio.CancelledError):
                        task = self.tasks[slot]
                        if self._cancelled[slot]:
                            raise  # the operator cancelled the event: handled below
                        if not self._timed_out[slot] and task.cancelling():
                            raise  # shutdown: handled below
                        if self._timed_out[slot]:
                            self._timed_out[slot] = False
                            task.uncancel()
                            exc = self._timeout_error(slot, handler, loop)
                        # else: the handler awaited something cancelled elsewhere: a failure
                    outcome = await self._failed(d, handler, attempts, exc, started)
                    last_error = failure_text(handler, exc)
        except asyncio.CancelledError:
            if self._cancelled[slot]:
                self._cancelled[slot] = False
                task = self.tasks[slot]
                task.uncancel()
                if self._timed_out[slot]:  # its timeout struck too: one cancel for both
                    self._timed_out[slot] = False
                    task.uncancel()
                self._cancelled_unit(d, handler, attempts)
                if task.cancelling():  # shutdown as well
                    raise
                return
            # Shutdown past its drain timeout: hand this attempt back, it did not count.
            if self._observer is not None:
                self._report(d, handler, "interrupted", None, attempts)
            self._record(d, handler, Outcome(Kind.INTERRUPTED, max(prior, attempts - 1)))
            raise
        self._record(d, handler, outcome)

    def _cancelled_unit(self, d: Delivery, handler: Handler, attempts: int) -> None:
        """Record a handler whose event an operator cancelled: not a failure, no retry."""
        if self._observer is not None:
            self._report(d, handler, "cancelled", None, attempts)
        self._record(d, handler, Outcome(Kind.CANCELLED, attempts))

    async def _absorb_cancel(self, slot: int) -> None:
        """The unit ended before our cancel reached it (or its handler swallowed it): take
        the cancel request back here, so that it cannot hit the slot's next unit."""
        self._cancelled[slot] = False
        task = self.tasks[slot]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        if task.uncancel() > 0:  # shutdown as well
            raise asyncio.CancelledError

    async def _call(
        self,
        slot: int,
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        value: Any,
        ctx: Context,
        headers: str | None,
    ) -> None:
        self._started[slot] = loop.time()
        if handler.is_async or self._threads is None:
            self._start_clock(slot, loop, handler)
            call = handler(value, ctx)
        else:  # the clock starts once a thread is free (see _worker/threads.py)
            call = self._threads.run(
                handler.call_sync, (value, ctx), lambda: self._start_clock(slot, loop, handler)
            )
        try:
            if self._tracing is None:
                await call
            else:
                await self._tracing.run(
                    call,
                    headers,
                    ctx.event_id,
                    ctx.event_type,
                    ctx.handler,
                    ctx.attempt,
                )
        finally:
            self._deadlines[slot] = math.inf
        if self._timed_out[slot]:  # the handler swallowed our cancel and finished anyway
            self._timed_out[slot] = False
            self.tasks[slot].uncancel()
        elif handler.is_async and handler.timeout is not None:
            took = loop.time() - self._started[slot]
            if took > handler.timeout + BLOCKED_SLACK:  # nothing could cancel it: it blocked
                raise LoopBlocked(handler, took)

    def _start_clock(self, slot: int, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        self._started[slot] = started = loop.time()
        if handler.timeout is not None:
            self._deadlines[slot] = started + handler.timeout

    def _timeout_error(
        self, slot: int, handler: Handler, loop: asyncio.AbstractEventLoop
    ) -> TimeoutError:
        """The watchdog cancelled this slot's handler: past its timeout by blocking the loop
        (the watchdog could not run in time), or by awaiting. A sync handler runs in a thread
        and cannot block the loop: its timeout is a plain one."""
        took = loop.time() - self._started[slot]
        blocked = handler.timeout is not None and took > handler.timeout + BLOCKED_SLACK
        if blocked and handler.is_async:
            return LoopBlocked(handler, took)
        return TimeoutError()

    def _invalid(self, d: Delivery, handler: Handler, attempts: int, exc: BaseException) -> Outcome:
        """The payload does not match the handler's model: dead at once, no retries."""
        text = invalid_text(handler, exc)
        log.warning(
            "event %d handler %s is dead: %s",
            d.row.id,
            handler.name,
            text,  # field names and messages, never values
            extra=_fields(d, handler, attempts, exc),
        )
        if self._observer is not None:
            self._report(d, handler, "dead", None, attempts)
        return Outcome(Kind.DEAD, attempts, text)

    def _report(
        self, d: Delivery, handler: Handler, outcome: str, started: float | None, attempts: int
    ) -> None:
        """Tell the metrics how a run ended; a first attempt also gives the event's lag
        (handler start minus created_at, on the database clock)."""
        assert self._observer is not None
        lag = None
        if started is not None and attempts == 1:
            lag = d.row.age + (started - d.claimed_at)
        self._observer.handler_ran(d.row.event_type, handler.name, outcome, started, lag)

    async def _failed(
        self, d: Delivery, handler: Handler, attempts: int, exc: BaseException, started: float
    ) -> Outcome | None:
        """Judge a failed attempt; None means: retry in process now (after a short sleep)."""
        verdict, text = judge(handler, attempts, d.elapsed, exc)
        if self._observer is not None:
            self._report(d, handler, "dead" if verdict.dead else "retry", started, attempts)
        if verdict.dead:
            log.warning(
                "event %d handler %s is dead after %d attempt(s): %s",
                d.row.id,
                handler.name,
                attempts,
                type(exc).__name__,
                extra=_fields(d, handler, attempts, exc),
            )
            return Outcome(Kind.DEAD, attempts, text)
        log.info(
            "event %d handler %s failed (attempt %d, %s); retrying in %.1fs",
            d.row.id,
            handler.name,
            attempts,
            type(exc).__name__,
            verdict.delay,
            extra={**_fields(d, handler, attempts, exc), "delay": round(verdict.delay, 3)},
        )
        if verdict.delay <= handler.policy.inline_max_wait and not self._stopping() and not d.lost:
            await asyncio.sleep(verdict.delay)
            return None
        return Outcome(Kind.RETRY, attempts, text, verdict.delay)


def _fields(d: Delivery, handler: Handler, attempts: int, exc: BaseException) -> dict[str, Any]:
    """Structured log fields of a failed run: ids and names, the error's class only (its
    message may quote payload data)."""
    return {
        "event_id": d.row.id,
        "event_type": d.row.event_type,
        "handler": handler.name,
        "attempt": attempts,
        "error": "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__,
    }
