"""The worker's bounded thread pool for plain-``def`` handlers.

A sync handler (Django ORM code, a requests-based client) blocks its thread, never the event
loop: the claim loop, the heartbeat that renews every lease, the completer and the async
handlers go on meanwhile. At most ``size`` sync handlers run at once (``--sync-threads``);
a run waits for a free thread first, and its timeout starts only when it has one (waiting
for a thread is not the handler's time, as waiting for a runner is not).

What a timeout can do to a thread: nothing. Python cannot stop a thread from outside. When a
sync handler passes its timeout, the worker records the attempt as failed with TimeoutError
at once (retried or dead by its policy, exactly as for an async handler), and the event
moves on; the thread runs on until the function returns, and only then frees its slot. Its
result is then dropped. Until then the pool has one thread fewer (logged), and a retry of the
same event may run while the abandoned call is still going: ``pgqueue.once_sync`` keeps the
effect single. A function that never returns holds its slot until the process exits.

The threads are daemon threads of our own rather than a ``ThreadPoolExecutor``: the
executor's threads are joined when the interpreter exits, so one hung handler would keep a
stopped worker process from exiting at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pgqueue.worker")

_Work = tuple[
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
]


class ThreadPool:
    """Runs blocking calls on at most ``size`` daemon threads (started as needed)."""

    def __init__(self, size: int, name: str = "pgqueue-sync") -> None:
        self.size = size
        self._name = name
        self._slots = asyncio.Semaphore(size)
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.busy = 0  # calls on a thread now, abandoned ones (timed out) included

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], started: Callable[[], None]
    ) -> Any:
        """Call ``fn(*args)`` on a free thread (in a copy of this context) and return its
        result. ``started()`` is called once a thread is ours, before the call begins.

        Cancelled (timeout, shutdown), this returns at once; the call runs on to its end."""
        await self._slots.acquire()
        started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.busy += 1
        if self.busy > len(self._threads):
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._work.put((contextvars.copy_context(), fn, args, loop, future))
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done():
                log.warning(
                    "a sync handler was stopped waiting (timeout or shutdown); its thread "
                    "cannot be interrupted and keeps its slot until the function returns "
                    "(%d of %d threads busy)",
                    self.busy,
                    self.size,
                )
            raise

    def close(self) -> None:
        """Let every thread exit once it is idle (abandoned calls run on; they are daemon
        threads, so they never hold up the process's exit)."""
        for _ in self._threads:
            self._work.put(None)
        self._threads = []

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            context, fn, args, loop, future = work
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(fn, *args)
            except (SystemExit, KeyboardInterrupt) as exc:
                # In a thread these end nothing but the thread: a failure of the handler.
                error = RuntimeError(f"{type(exc).__name__} raised in a sync handler's thread")
            except BaseException as exc:
                error = exc
            # A closed loop (RuntimeError): its worker is gone and nobody waits for this.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finished, future, result, error)
            del work, future, result, error

    def _finished(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self.busy -= 1
        self._slots.release()
        if future.done():  # cancelled: a timeout or shutdown already recorded the outcome
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
