"""Subprocess: a producer separate from the worker.

``python -m bench.producer --system S --dsn DSN latency --count 500 --gap 0.02 --out F``
  enqueues one event at a time; records (id, monotonic before the call, monotonic when the
  call returned = commit acknowledged, autocommit) for each.
``python -m bench.producer --system S --dsn DSN rate --rate 10000 --seconds 30 --out F``
  enqueues with the batch API every ``--tick`` seconds as many events as are due to hold the
  rate; records how many were sent and the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg

from ._systems import PGQUEUE, PGQUEUER, producer


async def latency(args: argparse.Namespace, conn: asyncpg.Connection) -> dict[str, Any]:
    p = producer(args.system, conn)
    sent: list[tuple[int, float, float]] = []
    for n in range(args.count):
        t_call = time.monotonic()
        event_id = await p.one(n)
        t_ret = time.monotonic()
        sent.append((event_id, t_call, t_ret))
        await asyncio.sleep(args.gap)
    return {"sent": sent}


async def rate(args: argparse.Namespace, conn: asyncpg.Connection) -> dict[str, Any]:
    p = producer(args.system, conn)
    max_batch = max(1, int(args.rate * args.tick * 10))
    sent = 0
    t0 = time.monotonic()
    end = t0 + args.seconds
    while (now := time.monotonic()) < end:
        due = int((now - t0) * args.rate) - sent
        if due <= 0:
            await asyncio.sleep(args.tick)
            continue
        count = min(due, max_batch)
        await p.many(sent, count)
        sent += count
    elapsed = time.monotonic() - t0
    return {"sent": sent, "seconds": elapsed, "rate": sent / elapsed}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(args.dsn)
    try:
        result = await (latency if args.mode == "latency" else rate)(args, conn)
    finally:
        await conn.close()
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.producer")
    p.add_argument("--system", choices=[PGQUEUE, PGQUEUER], required=True)
    p.add_argument("--dsn", required=True)
    sub = p.add_subparsers(dest="mode", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--count", type=int, default=500)
    lat.add_argument("--gap", type=float, default=0.02)
    lat.add_argument("--out", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--rate", type=float, default=10_000)
    r.add_argument("--seconds", type=float, default=30)
    r.add_argument("--tick", type=float, default=0.005)
    r.add_argument("--out", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    Path(arguments.out).write_text(json.dumps(asyncio.run(main(arguments))))
