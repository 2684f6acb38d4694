"""Handlers for the rate-limit tests; workers load ``tests.integration.rate_handlers:registry``.

Every run writes a ``rate_runs`` row (database clock) when it starts.

- ``rates.tick``: ``tick`` (rate 20/s across every worker);
- ``rates.keyed``: ``per_key`` (rate 1/h per ordering key: one run per key, until an operator
  overrides the rate).
"""

from __future__ import annotations

import os
from typing import Any

import pgqueue

TABLES = """
CREATE TABLE IF NOT EXISTS rate_runs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   bigint NOT NULL,
    handler    text NOT NULL,
    key        text,
    pid        integer NOT NULL,
    attempt    integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

START = """
INSERT INTO rate_runs (event_id, handler, key, pid, attempt)
VALUES ($1, $2, (SELECT ordering_key FROM pgqueue.outbox WHERE id = $1), $3, $4)
"""

registry = pgqueue.Registry()


async def create_tables(conn: Any) -> None:
    """Create the table these handlers write (idempotent)."""
    await conn.execute(TABLES)


@registry.on("rates.tick", rate="20/s")
async def tick(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Records its run."""
    await ctx.pool.execute(START, ctx.event_id, ctx.handler, os.getpid(), ctx.attempt)


@registry.on("rates.keyed", rate="1/h", rate_per_key=True)
async def per_key(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Records its run."""
    await ctx.pool.execute(START, ctx.event_id, ctx.handler, os.getpid(), ctx.attempt)
