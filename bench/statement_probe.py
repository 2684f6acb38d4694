"""Diagnostic, not a figure: PostgreSQL CPU per row of the claim and of the completion.

``python -m bench.statement_probe [--dsn DSN] [--events 100000] [--rounds 3]``

Enqueues ``--events`` events, then claims them 1,000 at a time on a connection set up as the
worker's claim connection and completes each batch on one set up as its control connection,
one statement after the other. Each backend's CPU time (utime + stime from /proc/<pid>/stat,
so the server must run on this host) is read around each statement: busy neighbours slow the
wall clock far more than they change these. Prints microseconds per row, per round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

import pgqueue
from pgqueue._db import pool_options
from pgqueue._queries import queries_for

from ._db import DEFAULT_ADMIN_DSN, Databases
from ._systems import EVENT_TYPE

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def probe(dsn: str, events: int) -> tuple[float, float, float]:
    """(claim, completion, client) microseconds per row over ``events`` events."""
    control = await asyncpg.connect(dsn, **pool_options(pooled=False, control=True))
    claimer = await asyncpg.connect(dsn, **pool_options(pooled=False, control=True, generic=True))
    try:
        for start in range(0, events, 1000):
            count = min(1000, events - start)
            batch = [pgqueue.Event(event_type=EVENT_TYPE, payload={"n": n}) for n in range(count)]
            await pgqueue.enqueue_many(control, batch)
        await control.execute("VACUUM ANALYZE pgqueue.outbox")
        q = queries_for("pgqueue")
        claim_pid = await claimer.fetchval("SELECT pg_backend_pid()")
        control_pid = await control.fetchval("SELECT pg_backend_pid()")
        claim_cpu = done_cpu = 0.0
        rows_seen = 0
        client0 = time.process_time()
        while True:
            token = uuid.uuid4()
            before = cpu_seconds(claim_pid)
            rows = await q.core.claim(claimer, "default", [EVENT_TYPE], 1000, token, "probe", 30.0)
            claim_cpu += cpu_seconds(claim_pid) - before
            if not rows:
                break
            before = cpu_seconds(control_pid)
            await q.core.complete_done(control, [r.id for r in rows], token)
            done_cpu += cpu_seconds(control_pid) - before
            rows_seen += len(rows)
        client = time.process_time() - client0
    finally:
        await claimer.close()
        await control.close()
    per_row = 1e6 / rows_seen
    return claim_cpu * per_row, done_cpu * per_row, client * per_row


async def main(args: argparse.Namespace) -> None:
    dbs = Databases(args.dsn)
    await dbs.setup()
    try:
        results = []
        for _ in range(args.rounds):
            async with dbs.fresh() as dsn:
                results.append(await probe(dsn, args.events))
    finally:
        await dbs.teardown()
    for i, label in enumerate(("claim", "completion", "client (this process)")):
        values = [r[i] for r in results]
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{label:22s} us CPU per row: median {statistics.median(values):.2f} ({shown})")
    command = f"python -m bench.statement_probe --events {args.events} --rounds {args.rounds}"
    print(f"reproduce: {command}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.statement_probe")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
