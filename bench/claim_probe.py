"""Diagnostic, not a figure: what one small claim costs (the latency path), and how much of it
is planning.

``python -m bench.claim_probe [--dsn DSN] [--claims 300] [--rounds 3]``

The worker's control connections plan every statement with its actual parameters
(``plan_cache_mode = force_custom_plan``, see pgqueue/_worker/worker.py). For an idle worker woken
for
one event, the claim's planning is then a large part of the commit-to-handler latency. This
inserts one event and claims it, ``--claims`` times per round, under force_custom_plan and
force_generic_plan, and prints the median microseconds per claim of each round.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
import uuid

import asyncpg

from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, Databases
from ._systems import EVENT_TYPE


async def probe(dsn: str, mode: str, claims: int) -> float:
    q = queries_for("pgqueue")
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": mode})
    try:
        statement = await conn.prepare(q.core.CLAIM)
        times: list[float] = []
        for _ in range(claims):
            await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ($1)", EVENT_TYPE)
            t0 = time.perf_counter()
            await statement.fetch(
                "default", [EVENT_TYPE], 1000, uuid.uuid4(), "probe", 30.0, -math.inf
            )
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    db = Databases(args.dsn)
    await db.setup()
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            medians = []
            for _ in range(args.rounds):
                async with db.fresh() as dsn:
                    medians.append(await probe(dsn, mode, args.claims))
            print(f"{mode:18s} us per 1-row claim: " + ", ".join(f"{m:.0f}" for m in medians))
    finally:
        await db.teardown()
    print(f"reproduce: python -m bench.claim_probe --claims {args.claims} --rounds {args.rounds}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.claim_probe")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--claims", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
