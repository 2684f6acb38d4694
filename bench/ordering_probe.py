"""Diagnostic, not a figure: what an ordering key costs an event at claim and at completion,
from EXPLAIN (ANALYZE, BUFFERS) of the worker's own statements (no throughput timing: the
figures hold on a shared machine).

``python -m bench.ordering_probe [--dsn DSN] [--events 20000] [--batch 1000]``

Fills ``--events`` events that each have their own ordering key (type ``k``) and as many without
a key (type ``u``), VACUUM ANALYZE, then claims them in batches of ``--batch``, keyed and unkeyed
alternately, and completes each batch as the happy path does (COMPLETE_DONE). Prints per event:
the statements' execution time, shared buffers touched, and the completion's trigger time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from pgqueue._db import CONTROL_SETTINGS
from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, Databases

FILL = """
INSERT INTO pgqueue.outbox (event_type, ordering_key)
SELECT t, CASE WHEN t = 'k' THEN 'key-' || n END
FROM generate_series(1, $1) AS n, unnest(ARRAY['k', 'u']) AS t
"""


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


async def explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    """Run ``sql`` under EXPLAIN (ANALYZE, BUFFERS); return the JSON plan's top object."""
    text = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
    top: dict[str, Any] = json.loads(text)[0]
    return top


async def probe(conn: asyncpg.Connection, events: int, batch: int) -> dict[str, dict[str, float]]:
    """Fill, then claim and complete everything; the sums per kind ('k' keyed, 'u' not)."""
    q = queries_for("pgqueue").core
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    await conn.execute(FILL, events)
    await conn.execute("VACUUM ANALYZE pgqueue.outbox")
    ids_sql = (
        "SELECT array_agg(id) FROM (SELECT id FROM pgqueue.outbox WHERE state = 'running'"
        " AND event_type = $1) AS r"
    )
    for _ in range(math.ceil(events / batch)):
        for kind in ("k", "u"):
            token = uuid.uuid4()
            out = await explain(
                conn, q.CLAIM, "default", [kind], batch, token, "probe", 300.0, -math.inf
            )
            t = totals[kind]
            t["events"] += int(out["Plan"]["Actual Rows"])
            t["claim_ms"] += out["Execution Time"]
            t["claim_buffers"] += _buffers(out["Plan"])
            ids = await conn.fetchval(ids_sql, kind)
            out = await explain(conn, q.COMPLETE_DONE, ids, token)
            t["complete_ms"] += out["Execution Time"]
            t["complete_buffers"] += _buffers(out["Plan"])
            t["trigger_ms"] += sum(tr["Time"] for tr in out.get("Triggers", []))
    return totals


async def main(args: argparse.Namespace) -> None:
    databases = Databases(args.dsn)
    await databases.setup()
    try:
        async with databases.fresh() as dsn:
            # As the worker's control connections (pgqueue/_db.py CONTROL_SETTINGS).
            conn = await asyncpg.connect(dsn, server_settings=dict(CONTROL_SETTINGS))
            try:
                totals = await probe(conn, args.events, args.batch)
            finally:
                await conn.close()
    finally:
        await databases.teardown()
    for kind, label in (("u", "unkeyed"), ("k", "distinct keys")):
        t = totals[kind]
        n = t["events"] or 1
        print(
            f"{label:14s} per event: claim {t['claim_ms'] * 1000 / n:6.1f} us "
            f"{t['claim_buffers'] / n:5.2f} buffers; "
            f"complete {t['complete_ms'] * 1000 / n:6.1f} us "
            f"{t['complete_buffers'] / n:5.2f} buffers "
            f"(trigger {t['trigger_ms'] * 1000 / n:5.1f} us)"
        )
    print(f"command: python -m bench.ordering_probe --events {args.events} --batch {args.batch}")


def arguments() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--events", type=int, default=20_000, help="keyed events (as many not)")
    parser.add_argument("--batch", type=int, default=1000, help="events per claim")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(arguments()))
