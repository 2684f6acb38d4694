"""Figure 2: batch enqueue, 20,000 events in calls of 1,000 (each call its own transaction).

pgqueue ``enqueue_many`` (given ready ``Event`` objects, so payload encoding is inside the
timing) and PgQueuer ``Queries.enqueue`` with lists (given ready payload bytes).
"""

from __future__ import annotations

import time

import asyncpg

import pgqueue

from ._db import checkpoint
from ._options import Bench, Figures
from ._systems import ENTRYPOINT, EVENT_TYPE, payload_bytes

N = 20_000
CHUNK = 1_000


async def _pgqueue(conn: asyncpg.Connection) -> float:
    chunks = [
        [pgqueue.Event(event_type=EVENT_TYPE, payload={"n": n}) for n in range(s, s + CHUNK)]
        for s in range(0, N, CHUNK)
    ]
    await pgqueue.enqueue_many(conn, chunks[0])  # warm-up: prepare the statement
    await checkpoint(conn)
    t0 = time.perf_counter()
    for chunk in chunks:
        await pgqueue.enqueue_many(conn, chunk, chunk_size=CHUNK)
    return N / (time.perf_counter() - t0)


async def _pgqueuer(conn: asyncpg.Connection) -> float:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    queries = Queries(AsyncpgDriver(conn))
    chunks = [[payload_bytes(n) for n in range(s, s + CHUNK)] for s in range(0, N, CHUNK)]
    entrypoints, priorities = [ENTRYPOINT] * CHUNK, [0] * CHUNK
    await queries.enqueue(entrypoints, chunks[0], priorities)
    await checkpoint(conn)
    t0 = time.perf_counter()
    for chunk in chunks:
        await queries.enqueue(entrypoints, chunk, priorities)
    return N / (time.perf_counter() - t0)


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    for key, measure in (("batch.pgqueue", _pgqueue), ("batch.pgqueuer", _pgqueuer)):
        async with bench.db.fresh() as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                out[key] = await measure(conn)
            finally:
                await conn.close()
    return out
