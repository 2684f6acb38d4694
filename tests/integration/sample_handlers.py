"""Handler registries the CLI tests serve in a child process.

``pgqueue worker --handlers tests.integration.sample_handlers:registry`` (run from the project
root). Each handler records its effect with :func:`pgqueue.once`, so a test can assert on the
``pgqueue.effects`` rows the subprocess left behind.
"""

from __future__ import annotations

from typing import Any

import pgqueue

registry = pgqueue.Registry()


async def _record(ctx: pgqueue.Context) -> None:
    async with ctx.pool.acquire() as conn, conn.transaction():
        await pgqueue.once(conn, ctx)


@registry.on("sample.ping")
async def pong(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Record (event, 'pong') in the effects ledger."""
    await _record(ctx)


@registry.on("sample.ping")
async def audit(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Record (event, 'audit') in the effects ledger."""
    await _record(ctx)


not_a_registry = {"sample.ping": pong}


@registry.on("sample.pid")
async def record_pid(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Insert (event id, this process id) into the test's own ``runs`` table."""
    import os

    async with ctx.pool.acquire() as conn:
        await conn.execute("INSERT INTO runs VALUES ($1, $2)", ctx.event_id, os.getpid())
