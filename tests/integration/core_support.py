"""Helpers shared by the test_core_* integration tests: counting registries, burst runs, rows.

The rolled-back-transaction fixture ``tx`` these tests use is in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from tenacity import stop_after_attempt, wait_none

import pgqueue

Calls = Counter[tuple[int, str]]
QUICK = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_none(), inline_max_wait=1.0)


def counting(
    registry: pgqueue.Registry,
    calls: Calls,
    event_type: str,
    name: str,
    *,
    behaviour: Callable[[pgqueue.Context], Awaitable[None]] | None = None,
    retry: pgqueue.RetryPolicy | None = None,
) -> None:
    """Register handler ``name`` that counts its invocations per (event id, handler)."""

    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        calls[(ctx.event_id, ctx.handler)] += 1
        if behaviour is not None:
            await behaviour(ctx)

    registry.add(event_type, handler, name=name, retry=retry)


async def run_burst(
    dsn: str, registry: pgqueue.Registry, timeout: float = 30.0, **settings: Any
) -> pgqueue.WorkerStats:
    """Run a burst worker to completion (fails the test if it hangs)."""
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(burst=True, **settings))
    return await asyncio.wait_for(worker.run(), timeout=timeout)


async def outbox_row(conn: asyncpg.Connection, event_id: int, schema: str = "pgqueue") -> Any:
    """The outbox row of ``event_id`` with ``handlers`` decoded."""
    row = await conn.fetchrow(f'SELECT * FROM "{schema}".outbox WHERE id = $1', event_id)
    assert row is not None, f"event {event_id} not found"
    data = dict(row)
    data["payload"] = json.loads(data["payload"])
    data["handlers"] = json.loads(data["handlers"]) if data["handlers"] is not None else None
    return data


async def handler_states(conn: asyncpg.Connection, event_id: int) -> dict[str, Any]:
    """The rows of pgqueue.handler_states for one event, by handler name."""
    rows = await conn.fetch(
        "SELECT handler, state, attempts, last_error FROM pgqueue.handler_states"
        " WHERE event_id = $1",
        event_id,
    )
    return {r["handler"]: dict(r) for r in rows}
