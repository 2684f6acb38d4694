"""Diagnostic, not a figure: how long pgqueue's claim and complete statements take once
PostgreSQL switches a prepared statement to its cached generic plan.

``python -m bench.plan_probe [--dsn DSN] [--pending 200000] [--batch 500]``

asyncpg prepares every statement; PostgreSQL plans the first five executions with the actual
parameters (custom plans) and may then settle on one generic plan for good. A generic plan that
joins the outbox to ``unnest($1, $2)`` can become a nested loop that rescans the unnested
array once per running row (quadratic in the batch), and one built while the table was small
keeps seq-scanning it after it has grown. This prints the median time of executions 1-5 and
6-10 under ``plan_cache_mode`` auto and force_generic_plan.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, Databases
from ._systems import EVENT_TYPE, PGQUEUE, prefill


async def probe(dsn: str, mode: str, batch: int) -> str:
    q = queries_for("pgqueue")
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": mode})
    claims: list[float] = []
    completes: list[float] = []
    try:
        for _ in range(10):
            token = uuid.uuid4()
            t0 = time.perf_counter()
            rows = await q.core.claim(conn, "default", [EVENT_TYPE], batch, token, "probe", 30)
            t1 = time.perf_counter()
            await q.core.complete_done(conn, [r.id for r in rows], token)
            t2 = time.perf_counter()
            claims.append((t1 - t0) * 1000)
            completes.append((t2 - t1) * 1000)
    finally:
        await conn.close()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values[:5]):6.1f} -> {statistics.median(values[5:]):6.1f}"

    return f"{mode:18s} claim ms {ms(claims)}   complete ms {ms(completes)}"


async def main(args: argparse.Namespace) -> None:
    db = Databases(args.dsn)
    await db.setup()
    try:
        for mode in ("auto", "force_generic_plan"):
            async with db.fresh() as dsn:
                await prefill(PGQUEUE, dsn, args.pending)
                print(await probe(dsn, mode, args.batch))
    finally:
        await db.teardown()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.plan_probe")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--pending", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=500)
    asyncio.run(main(p.parse_args()))
