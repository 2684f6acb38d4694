"""What metrics cost the drain: figure 3 (pgqueue, 20,000 events, one no-op handler) with and
without ``Metrics`` (served on a free port), run alternately so load drifts hit both alike.

``python -m bench.observe_probe [--dsn DSN] [--runs 3]``

Prints every run and the medians of events/s (``run()`` entry to return), the rate from the
first to the last handler start, and the worker's CPU per event.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from ._db import DEFAULT_ADMIN_DSN, Databases
from ._options import Bench, Options
from ._systems import PGQUEUE
from .s3_drain import N, drain


async def main(args: argparse.Namespace) -> None:
    db = Databases(args.dsn)
    await db.setup()
    bench = Bench(db, Options(runs=args.runs))
    figures: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    try:
        for run in range(1, args.runs + 1):
            for label in ("off", "on"):
                result = await drain(bench, PGQUEUE, metrics=label == "on")
                span = result["last_start"] - result["first_start"]
                row = {
                    "ev/s": result["rate"],
                    "span ev/s": N / span if span > 0 else 0.0,
                    "cpu us/ev": result["cpu_run_s"] / N * 1e6,
                }
                for key, val in row.items():
                    figures[label].setdefault(key, []).append(val)
                shown = "  ".join(f"{k} {v:,.1f}" for k, v in row.items())
                print(f"run {run} metrics {label:3}: {shown}", flush=True)
    finally:
        await db.teardown()
    for label, rows in figures.items():
        medians = "  ".join(f"{k} {statistics.median(v):,.1f}" for k, v in rows.items())
        print(f"median metrics {label:3}: {medians}")
    print(f"reproduce: python -m bench.observe_probe --runs {args.runs}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.observe_probe")
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    p.add_argument("--runs", type=int, default=3)
    asyncio.run(main(p.parse_args()))
