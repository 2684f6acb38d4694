"""Handlers the observability tests serve, in process and in a CLI child process.

``pgqueue worker --handlers tests.integration.observe_handlers:registry``:

- ``order.placed``: ``ship`` succeeds; ``bill`` fails its first attempt and, with no quick
  in-process retry allowed, goes back to the database (one durable retry), then succeeds.
- ``order.poison``: ``explode`` gives up at once (``Discard``): the event ends dead.
"""

from __future__ import annotations

from typing import Any

from tenacity import stop_after_attempt, wait_fixed

import pgqueue

registry = pgqueue.Registry()

# Every failure becomes a durable retry (the wait is longer than inline_max_wait), due soon.
DURABLE = pgqueue.RetryPolicy(
    stop=stop_after_attempt(3), wait=wait_fixed(0.05), inline_max_wait=0.01
)


@registry.on("order.placed")
async def ship(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Succeeds."""


@registry.on("order.placed", retry=DURABLE)
async def bill(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Fails the first attempt (the message quotes the payload: it must not reach logs)."""
    if ctx.attempt == 1:
        raise ConnectionError(f"card declined: {payload}")


@registry.on("order.poison")
async def explode(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Gives up at once."""
    raise pgqueue.Discard(f"cannot handle {payload}")
