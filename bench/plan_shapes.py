"""Diagnostic, not a figure: the claim's plan tree on one server, to compare PostgreSQL majors.

``python -m bench.plan_shapes --pg 18`` (or ``--dsn DSN``); diff the output of two versions.

Seeded as the plan guard in tests/integration/test_operations.py (200,000 done rows, 2,000
ready ones of three priorities, 20,000 due tomorrow, ANALYZE), then EXPLAIN of the claim with
a custom plan, a generic plan, and a generic plan bounded below by a floor. The guard asserts
what must hold on every version; this prints the whole tree, so a new major's planner change
shows up even where the guard still passes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import re
import time
import uuid
from typing import Any

import asyncpg

import pgqueue
from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, dsn_for, private_server

DB = "pgqueue_plan_shapes"
_TIMESTAMP = re.compile(r"'\d{4}-\d\d-\d\d [^']*'")  # the floor: differs run to run


def tree(plan: dict[str, Any], depth: int = 0) -> list[str]:
    """One line per node: type, relation or index, index condition."""
    bits = [plan["Node Type"]]
    bits += [f"{key}={plan[key]}" for key in ("Relation Name", "Index Name") if key in plan]
    if "Index Cond" in plan:
        bits.append("cond=" + _TIMESTAMP.sub("'<floor>'", plan["Index Cond"]))
    lines = ["  " * depth + " ".join(bits)]
    for child in plan.get("Plans", []):
        lines += tree(child, depth + 1)
    return lines


async def seed(conn: asyncpg.Connection) -> None:
    await pgqueue.migrate(conn)
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, created_at, processed_at)"
        " SELECT 'old', 'done', now() - interval '1 day', now() - interval '1 day'"
        " FROM generate_series(1, 200000)"
    )
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    ready = [pgqueue.Event(event_type="t", payload={}, priority=i % 3) for i in range(2000)]
    later = [pgqueue.Event(event_type="t", payload={}, priority=9, run_at=tomorrow)] * 20_000
    await pgqueue.enqueue_many(conn, ready + later)
    await conn.execute("ANALYZE pgqueue.outbox")


async def main(admin_dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB}")
        print(f"PostgreSQL {await admin.fetchval('SHOW server_version')}")
        conn = await asyncpg.connect(dsn_for(admin_dsn, DB))
        try:
            await seed(conn)
            q = queries_for("pgqueue")
            cases = [("custom", -math.inf), ("generic", -math.inf), ("generic", time.time() - 60)]
            for mode, floor in cases:
                await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                args = ("default", ["t"], 500, uuid.uuid4(), "w", 30.0, floor)
                async with conn.transaction():
                    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {q.core.CLAIM}", *args)
                    await conn.execute("SELECT 1")
                print(f"-- claim, {mode} plan, floor {'set' if floor > -math.inf else 'none'}")
                print("\n".join(tree(json.loads(raw)[0]["Plan"])))
        finally:
            await conn.close()
        await admin.execute(f"DROP DATABASE {DB} WITH (FORCE)")
    finally:
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.plan_shapes")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="maintenance DSN (CREATEDB)")
    p.add_argument("--pg", default="", metavar="VERSION", help="a private server instead")
    args = p.parse_args()
    if args.pg:
        with private_server(args.pg) as dsn:
            asyncio.run(main(dsn))
    else:
        asyncio.run(main(args.dsn))
