"""One lifecycle for the worker's background services, and one backoff loop.

A service is anything with a ``name`` and an ``async run()`` that works until it is cancelled
(the completer, the listener, the lease keeper, the scheduler, the limiter, the ordering and
rate gates, the stall guard, presence, paused queues, one lane per relay). The worker starts
each as one task, supervises them alike (a service that ends on its own stops the worker
loudly) and cancels them alike. Their "fail, back off, log, retry" is :func:`run_with_backoff`,
written once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._backoff import describe_error, is_transient, reconnect_delay

log = logging.getLogger("pgqueue.worker")


class Service(Protocol):
    """A background service: ``run()`` works until cancelled and never returns by itself."""

    @property
    def name(self) -> str:
        """What the service is called (its task's name, in logs)."""

    async def run(self) -> None:
        """Work until cancelled."""


async def run_with_backoff(
    step: Callable[[], Awaitable[float | None]],
    what: str,
    *,
    fatal: Callable[[BaseException], bool] = lambda exc: False,
    on_error: Callable[[BaseException], Awaitable[None]] | None = None,
    cap: float | None = None,
    logger: logging.Logger = log,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Call ``step`` until it returns None, waiting the seconds it returns between two calls.

    When it raises, log one line ("<what> failed (<error>); retrying in <delay>s": the error's
    type and SQLSTATE, never its message, which may quote data), await ``on_error`` and wait
    0.1 s doubling to 5 s (at most ``cap``) before the next call: a service never dies of an
    error that a retry may cure. An error for which ``fatal`` is true is raised instead.
    """
    failures = 0
    while True:
        try:
            delay = await step()
            failures = 0
        except Exception as exc:
            if fatal(exc):
                raise
            failures += 1
            delay = (
                reconnect_delay(failures) if cap is None else min(cap, reconnect_delay(failures))
            )
            logger.log(
                logging.WARNING if is_transient(exc) else logging.ERROR,
                "%s failed (%s); retrying in %.1fs",
                what,
                describe_error(exc),
                delay,
                extra={"error": describe_error(exc), "delay": delay},
            )
            if on_error is not None:
                await on_error(exc)
        if delay is None:
            return
        await sleep(delay)
