"""Handlers for the ordering tests; workers load ``tests.integration.ordering_handlers:registry``.

Every run writes an ``order_runs`` row when it starts (committed at once, so a run whose worker
is killed still shows) and sets ``ended_at`` and ``ok`` when it ends, from the database clock:
the test reads from these rows, per key, the order of the successful runs and whether two
overlapped.

- ``ordering.step``: ``seq`` (ordered; 30 attempts 0.05 s apart, durable: every retry goes
  back to the database as a pending event) and its unordered sibling ``audit``.
- ``ordering.fragile``: ``seq`` again (one key order spans both types), dead after 2 tries.

The payload steers ``seq``: ``"fail": p`` raises with probability p (after recording its run);
``"always_fail": true`` always raises; ``"sleep": s`` sleeps first.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from tenacity import stop_after_attempt, wait_fixed

import pgqueue

TABLES = """
CREATE TABLE IF NOT EXISTS order_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   bigint NOT NULL,
    key        text,
    handler    text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at   timestamptz,
    ok         boolean
);
"""

START = """
INSERT INTO order_runs (event_id, key, handler, pid)
VALUES ($1, (SELECT ordering_key FROM pgqueue.outbox WHERE id = $1), $2, $3) RETURNING id
"""
END = "UPDATE order_runs SET ended_at = clock_timestamp(), ok = $2 WHERE id = $1"

registry = pgqueue.Registry()


async def create_tables(conn: Any) -> None:
    """Create the table these handlers write (idempotent)."""
    await conn.execute(TABLES)


async def _run(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    run_id = await ctx.pool.fetchval(START, ctx.event_id, ctx.handler, os.getpid())
    ok = False
    try:
        await asyncio.sleep(float(payload.get("sleep", 0)))
        if payload.get("always_fail") or random.random() < float(payload.get("fail", 0)):
            raise RuntimeError(f"planned failure of event {ctx.event_id}")
        ok = True
    finally:
        await ctx.pool.execute(END, run_id, ok)


@registry.on(
    "ordering.step",
    ordered=True,
    retry=pgqueue.RetryPolicy(
        stop=stop_after_attempt(30), wait=wait_fixed(0.05), inline_max_wait=0.0
    ),
)
async def seq(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """The ordered handler."""
    await _run(payload, ctx)


@registry.on("ordering.step")
async def audit(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Its unordered sibling: never held back by seq's key order."""
    await ctx.pool.fetchval(START, ctx.event_id, ctx.handler, os.getpid())


@registry.on(
    "ordering.fragile",
    name="seq",
    ordered=True,
    retry=pgqueue.RetryPolicy(
        stop=stop_after_attempt(2), wait=wait_fixed(0.05), inline_max_wait=0.0
    ),
)
async def seq_fragile(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """``seq`` for another event type (one key order spans both), giving up after 2 tries."""
    await _run(payload, ctx)
