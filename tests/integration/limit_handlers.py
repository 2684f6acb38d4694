"""Handlers for the concurrency-limit tests; workers load ``tests.integration.limit_handlers:
registry``.

Every run writes a ``limit_runs`` row when it starts (committed at once, so a run whose worker is
killed still shows) and sets ``ended_at`` when it ends, both from the database clock: the test
computes from these intervals how many runs of a handler overlapped.

- ``limits.job``: ``crm`` (concurrency 2) and its unlimited sibling ``audit``.
- ``limits.flaky``: ``solo`` (concurrency 1; 3 attempts, 0.3 s apart, so retries are durable:
  every retry must take a slot again).

The payload steers ``crm`` and ``solo``: ``"gate": true`` waits until ``limit_gate.open`` (the
test holds the limit saturated as long as it likes, without sleeping itself); ``"sleep": s``
sleeps; ``"fail": true`` raises after that.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tenacity import stop_after_attempt, wait_fixed

import pgqueue

TABLES = """
CREATE TABLE IF NOT EXISTS limit_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   bigint NOT NULL,
    handler    text NOT NULL,
    pid        integer NOT NULL,
    attempt    integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at   timestamptz
);
CREATE TABLE IF NOT EXISTS limit_gate (open boolean NOT NULL);
INSERT INTO limit_gate SELECT false WHERE NOT EXISTS (SELECT FROM limit_gate);
"""

START = """
INSERT INTO limit_runs (event_id, handler, pid, attempt) VALUES ($1, $2, $3, $4) RETURNING id
"""
END = "UPDATE limit_runs SET ended_at = clock_timestamp() WHERE id = $1"

registry = pgqueue.Registry()


async def create_tables(conn: Any) -> None:
    """Create the tables these handlers write (idempotent)."""
    await conn.execute(TABLES)


async def _run(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    run_id = await ctx.pool.fetchval(START, ctx.event_id, ctx.handler, os.getpid(), ctx.attempt)
    if payload.get("gate"):
        # The gate is a row another process opens: polling it is the point here.
        while not await ctx.pool.fetchval("SELECT open FROM limit_gate"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.sleep(float(payload.get("sleep", 0)))
    await ctx.pool.execute(END, run_id)
    if payload.get("fail"):
        raise RuntimeError(f"run {ctx.attempt} failed as asked")


@registry.on("limits.job", name="crm", concurrency=2)
async def crm(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """The limited handler."""
    await _run(payload, ctx)


@registry.on("limits.job", name="audit")
async def audit(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """The unlimited sibling: records its run and returns."""
    await _run({}, ctx)


@registry.on(
    "limits.flaky",
    name="solo",
    concurrency=1,
    retry=pgqueue.RetryPolicy(
        stop=stop_after_attempt(3), wait=wait_fixed(0.3), inline_max_wait=0.1
    ),
)
async def solo(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Limited to one run at a time; fails as the payload says."""
    await _run(payload, ctx)
