"""Diagnostic, not a figure: the claim with priorities (migration 0002) against the claim of
0001, on one database, alternating index and statement, each execution rolled back.

``python -m bench.priority_probe [--dsn DSN] [--rounds 6] [--runs 25]``

Three tables: 200,000 ready events; the same plus 100,000 due tomorrow; 200 ready plus 100,000
due tomorrow (the case a priority-led index makes expensive when the claim is a plain
``ORDER BY priority DESC, run_at, id``). Prints the median claim time (up to 1,000 rows, custom
plans as in the worker) and the median NEXT_DUE time for both.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg

from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, Databases

INDEX = {
    "0001": "CREATE INDEX outbox_ready_idx ON pgqueue.outbox (queue, run_at, id)"
    " WHERE state = 'pending'",
    "0002": "CREATE INDEX outbox_ready_idx ON pgqueue.outbox (queue, priority DESC, run_at, id)"
    " WHERE state = 'pending'",
}
# The statements of 0001 (pgqueue/_queries/core.py before priorities, then one module).
CLAIM_0001 = """
UPDATE pgqueue.outbox AS o
SET state = 'running', attempt = o.attempt + 1, lease_token = $4, leased_by = $5,
    lease_expires_at = now() + make_interval(secs => $6)
WHERE o.id = ANY(ARRAY(
    SELECT id FROM pgqueue.outbox
    WHERE state = 'pending' AND queue = $1 AND run_at <= now() AND event_type = ANY($2::text[])
    ORDER BY run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
))
RETURNING o.id, o.event_type, o.payload, o.attempt, o.handlers, o.created_at,
          extract(epoch FROM now())::float8 AS db_now,
          extract(epoch FROM now() - o.created_at)::float8 AS age
"""
NEXT_DUE_0001 = """
SELECT extract(epoch FROM min(run_at) - now())::float8 FROM pgqueue.outbox
WHERE state = 'pending' AND queue = $1 AND event_type = ANY($2::text[])
"""
TABLES = [("200k ready", 200_000, 0), ("200k ready + 100k future", 200_000, 100_000),
          ("200 ready + 100k future", 200, 100_000)]  # fmt: skip


async def timed(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...], runs: int) -> float:
    """Median milliseconds of ``runs`` executions, each rolled back."""
    out = []
    for _ in range(runs):
        tr = conn.transaction()
        await tr.start()
        t0 = time.perf_counter()
        await conn.fetch(sql, *args)
        out.append(time.perf_counter() - t0)
        await tr.rollback()
    return statistics.median(out) * 1000


async def table(conn: asyncpg.Connection, label: str, ready: int, future: int, a: Any) -> str:
    await conn.execute("TRUNCATE pgqueue.outbox")
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type) SELECT 't' FROM generate_series(1, $1)", ready
    )
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, run_at)"
        " SELECT 't', now() + interval '1 day' FROM generate_series(1, $1)",
        future,
    )
    q = queries_for("pgqueue")
    statements = {"0001": (CLAIM_0001, NEXT_DUE_0001), "0002": (q.core.CLAIM, q.core.NEXT_DUE)}
    claims: dict[str, list[float]] = {v: [] for v in statements}
    dues: dict[str, list[float]] = {v: [] for v in statements}
    for _ in range(a.rounds):
        for version, (claim, next_due) in statements.items():
            await conn.execute("DROP INDEX pgqueue.outbox_ready_idx")
            await conn.execute(INDEX[version])
            await conn.execute("VACUUM ANALYZE pgqueue.outbox")
            args = ("default", ["t"], 1000, uuid.uuid4(), "probe", 30.0)
            claims[version].append(await timed(conn, claim, args, a.runs))
            dues[version].append(await timed(conn, next_due, ("default", ["t"]), a.runs))
    med = statistics.median
    return (
        f"{label}: claim ms 0001={med(claims['0001']):.2f} 0002={med(claims['0002']):.2f}"
        f" | next_due ms 0001={med(dues['0001']):.3f} 0002={med(dues['0002']):.3f}"
    )


async def main(a: argparse.Namespace) -> None:
    db = Databases(a.dsn)
    await db.setup()
    try:
        async with db.fresh() as dsn:
            conn = await asyncpg.connect(
                dsn, server_settings={"plan_cache_mode": "force_custom_plan"}
            )
            try:
                for label, ready, future in TABLES:
                    print(await table(conn, label, ready, future, a), flush=True)
            finally:
                await conn.close()
    finally:
        await db.teardown()
    print(f"reproduce: python -m bench.priority_probe --rounds {a.rounds} --runs {a.runs}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.priority_probe")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--runs", type=int, default=25)
    asyncio.run(main(p.parse_args()))
