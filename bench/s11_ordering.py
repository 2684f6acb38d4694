"""Ordering (issue 15): drain 100,000 events that each have their own ordering key, with an
ordered handler, against 100,000 events without a key and the same handler unordered (the
plain drain of bench/s3_drain.py), alternately, on fresh databases.

Distinct keys never wait for each other, so the difference is the price of the order itself:
one HEADS statement per claimed batch (pgqueue/_worker/ordering.py) and the keyed rows' entries in
outbox_ordering_idx. ``ordering.ratio`` = keyed / unkeyed events/s of the same run.
"""

from __future__ import annotations

import asyncpg

import pgqueue

from ._db import checkpoint
from ._options import Bench, Figures
from ._systems import EVENT_TYPE, PGQUEUE
from .s3_drain import drain

N = 100_000


async def keyed_fill(dsn: str, count: int, chunk: int = 1000) -> None:
    """``count`` events, each with its own ordering key; then VACUUM ANALYZE, CHECKPOINT."""
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, count, chunk):
            events = [
                pgqueue.Event(event_type=EVENT_TYPE, payload={"n": n}, ordering_key=f"k{n}")
                for n in range(start, min(count, start + chunk))
            ]
            await pgqueue.enqueue_many(conn, events)
        await conn.execute("VACUUM ANALYZE pgqueue.outbox")
        await checkpoint(conn)
    finally:
        await conn.close()


async def run(bench: Bench) -> Figures:
    plain = await drain(bench, PGQUEUE, count=N)
    keyed = await drain(bench, PGQUEUE, count=N, fill=keyed_fill, worker_args=("--ordered",))
    return {
        "ordering.unkeyed": plain["rate"],
        "ordering.keyed_ordered": keyed["rate"],
        "ordering.ratio": keyed["rate"] / plain["rate"],
    }
