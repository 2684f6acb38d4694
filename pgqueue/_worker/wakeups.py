"""The events that wake the worker's loops, and the bounded waits on them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


class Wakeups:
    """The worker's three events, shared by its claim loop, suspect runs and shutdown.

    ``wakeup``: claim now (a NOTIFY, a lost lease, a stop request). ``progress``: an event left
    the in-flight set, or a stop request. ``force``: a second stop request (skip the drain wait).
    """

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self.wakeup = asyncio.Event()
        self.progress = asyncio.Event()
        self.force = asyncio.Event()

    async def sleep_or_wake(self, timeout: float) -> None:
        """Wait for ``wakeup``, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), timeout=timeout)

    async def progress_or(self, other: Awaitable[Any], timeout: float) -> None:
        """Wait for the next progress or for ``other``, at most ``timeout`` seconds."""
        self.progress.clear()
        await first(self.progress.wait(), other, timeout)

    async def progress_or_wakeup(self, timeout: float | None = None) -> None:
        """Wait for the next progress or ``wakeup``, at most ``timeout`` (the poll interval)."""
        await self.progress_or(
            self.wakeup.wait(), self.poll_interval if timeout is None else timeout
        )


async def first(a: Awaitable[Any], b: Awaitable[Any], timeout: float) -> None:
    """Wait until ``a`` or ``b`` finishes, at most ``timeout`` seconds; cancel the other."""
    tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
