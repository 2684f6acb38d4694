"""Handlers for the cancel / wait / pause tests; workers load ``tests.integration.flow_handlers:
registry``.

Every run writes a ``flow_runs`` row when it starts (committed at once) and its outcome when it
ends: ``done``, or ``cancelled`` when the handler task was cancelled (an operator's cancel, seen
at the worker's heartbeat). ``flow.block`` runs until ``flow_gate.open``: the test keeps it
running as long as it needs, without sleeping itself.

- ``flow.block``: ``blocker`` (waits for the gate) and ``sibling`` (returns at once).
- ``flow.quick``: ``quick`` returns at once.
- ``flow.poison``: ``poison`` discards itself (dead at once).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pgqueue

TABLES = """
CREATE TABLE IF NOT EXISTS flow_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   bigint NOT NULL,
    handler    text NOT NULL,
    outcome    text
);
CREATE TABLE IF NOT EXISTS flow_gate (open boolean NOT NULL);
INSERT INTO flow_gate SELECT false WHERE NOT EXISTS (SELECT FROM flow_gate);
"""

START = "INSERT INTO flow_runs (event_id, handler) VALUES ($1, $2) RETURNING id"
END = "UPDATE flow_runs SET outcome = $2 WHERE id = $1"

registry = pgqueue.Registry()


async def create_tables(conn: Any) -> None:
    """Create the tables these handlers write (idempotent)."""
    await conn.execute(TABLES)


async def _record(ctx: pgqueue.Context) -> int:
    run_id: int = await ctx.pool.fetchval(START, ctx.event_id, ctx.handler)
    return run_id


@registry.on("flow.block", name="blocker")
async def blocker(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Run until the test opens the gate; say so when cancelled instead."""
    run_id = await _record(ctx)
    try:
        # The gate is a row the test opens: polling it is the point here.
        while not await ctx.pool.fetchval("SELECT open FROM flow_gate"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        await asyncio.shield(ctx.pool.execute(END, run_id, "cancelled"))
        raise
    await ctx.pool.execute(END, run_id, "done")


@registry.on("flow.block", name="sibling")
async def sibling(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Finishes at once, next to the blocker."""
    await ctx.pool.execute(END, await _record(ctx), "done")


@registry.on("flow.quick", name="quick")
async def quick(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Finishes at once."""
    await ctx.pool.execute(END, await _record(ctx), "done")


@registry.on("flow.poison", name="poison")
async def poison(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Gives up at once: the event ends dead."""
    await _record(ctx)
    raise pgqueue.Discard("poisoned on purpose")
