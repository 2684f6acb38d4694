"""Subprocess: ONE worker (pgqueue or PgQueuer) with no-op handlers, timed and recorded.

``python -m bench.worker --system pgqueue --dsn DSN [--burst] [--handlers 3] [--record]
[--batch-size N] [--mark-at N] [--metrics] --out result.json``

--burst: run until nothing is ready (pgqueue ``burst=True``, PgQueuer ``mode=drain``);
otherwise run until SIGTERM (graceful stop). The handler costs one counter increment, plus one
list append with --record (event id, monotonic and wall clock at handler start, created_at).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import resource
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg

import pgqueue

from . import minimal
from ._systems import ENTRYPOINT, EVENT_TYPE, MINIMAL, PGQUEUE, PGQUEUER, proc_status


class Recorder:
    """What the first handler of each event sees."""

    def __init__(self, record: bool, mark_at: int | None) -> None:
        self.record = record
        self.mark_at = mark_at
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.mark: dict[str, Any] | None = None
        self.starts: list[tuple[int, float, float, dt.datetime]] = []

    def hit(self, event_id: int, created_at: dt.datetime) -> None:
        now = time.monotonic()
        if self.record:
            self.starts.append((event_id, now, time.time(), created_at))
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now
        if self.count == self.mark_at:
            self.mark = proc_status()

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_start": self.first,
            "last_start": self.last,
            "mark": self.mark,
            "starts": [[i, m, w, c.timestamp()] for i, m, w, c in self.starts],
        }


def pgqueue_registry(rec: Recorder, handlers: int, ordered: bool = False) -> pgqueue.Registry:
    """``handlers`` no-op handlers on the bench event type; the first one records (and is
    ``ordered`` when asked)."""
    registry = pgqueue.Registry()

    async def first(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        rec.hit(ctx.event_id, ctx.created_at)

    async def noop(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        return None

    registry.add(EVENT_TYPE, first, name="h0", ordered=ordered)
    for i in range(1, handlers):
        registry.add(EVENT_TYPE, noop, name=f"h{i}")
    return registry


async def run_pgqueue(args: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    """pgqueue.Worker with its default settings (burst when asked)."""
    overrides: dict[str, Any] = {}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    settings = pgqueue.WorkerSettings(burst=args.burst, **overrides)
    # --metrics: as `pgqueue worker --metrics-port`, served on a free port.
    metrics = pgqueue.Metrics(port=0) if args.metrics else None
    worker = pgqueue.Worker(
        args.dsn, pgqueue_registry(rec, args.handlers, args.ordered), settings, metrics=metrics
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.request_stop)
    t0 = time.monotonic()
    stats = await worker.run()
    t1 = time.monotonic()
    return {"run_start": t0, "run_end": t1, "done": stats.done, "batch_size": settings.batch_size}


async def run_pgqueuer(args: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    """PgQueuer's QueueManager on one asyncpg connection, as in its README."""
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(args.dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint(ENTRYPOINT)
    async def handler(job: Job) -> None:
        rec.hit(int(job.id), job.created)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    mode = QueueExecutionMode.drain if args.burst else QueueExecutionMode.continuous
    batch_size = args.batch_size or 10
    t0 = time.monotonic()
    await pgq.qm.run(batch_size=batch_size, mode=mode)
    t1 = time.monotonic()
    await conn.close()
    return {"run_start": t0, "run_end": t1, "done": rec.count, "batch_size": batch_size}


async def run_minimal(args: argparse.Namespace, rec: Recorder) -> dict[str, Any]:
    """The reference loop (bench/minimal.py) on one connection; batches of 100 by default."""
    conn = await asyncpg.connect(args.dsn)
    batch_size = args.batch_size or 100
    t0 = time.monotonic()
    done = await minimal.drain(conn, rec.hit, batch_size)
    t1 = time.monotonic()
    await conn.close()
    return {"run_start": t0, "run_end": t1, "done": done, "batch_size": batch_size}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder(args.record, args.mark_at)
    # As `pgqueue worker` does before its first claim (freeze_startup_heap in
    # pgqueue/_cli/worker.py): what the process imported stays out of the collector's full
    # passes. Done for every system alike, so no queue gets a process the others do not.
    gc.collect()
    gc.freeze()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    run = {PGQUEUE: run_pgqueue, PGQUEUER: run_pgqueuer, MINIMAL: run_minimal}[args.system]
    result = await run(args, rec)
    result.update(rec.result())
    result["status"] = proc_status()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["cpu_run_s"] = result["cpu_s"] - cpu_before
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("--system", choices=[PGQUEUE, PGQUEUER, MINIMAL], required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--handlers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=0, help="0 = the system's default")
    p.add_argument("--record", action="store_true")
    p.add_argument("--ordered", action="store_true", help="pgqueue: h0 is ordered=True")
    p.add_argument("--metrics", action="store_true", help="pgqueue: collect and serve metrics")
    p.add_argument("--mark-at", type=int, default=None, help="read RSS at this handler count")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    Path(arguments.out).write_text(json.dumps(asyncio.run(main(arguments))))
