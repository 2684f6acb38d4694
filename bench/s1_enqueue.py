"""Figure 1: single enqueue, 20,000 events, one per transaction (autocommit), one connection.

pgqueue's Python ``enqueue``, the SQL ``pgqueue.enqueue()`` function, a plain INSERT into the
same table (the ceiling: same trigger, no ON CONFLICT / RETURNING, no Python checks), and
PgQueuer's single ``Queries.enqueue``. Each case on a fresh database, after 200 warm-up calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

import pgqueue

from ._db import checkpoint
from ._options import Bench, Figures
from ._systems import EVENT_TYPE, PGQUEUER, producer

N = 20_000
WARMUP = 200

Call = Callable[[int], Awaitable[Any]]

SQL_FUNCTION = "SELECT pgqueue.enqueue($1, $2::jsonb)"
PLAIN_INSERT = "INSERT INTO pgqueue.outbox (event_type, payload) VALUES ($1, $2::jsonb)"


def _text(n: int) -> str:
    return json.dumps({"n": n}, separators=(",", ":"))


async def _rate(bench: Bench, make: Callable[[asyncpg.Connection], Call]) -> float:
    async with bench.db.fresh() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            call = make(conn)
            for n in range(WARMUP):
                await call(n)
            await checkpoint(conn)
            t0 = time.perf_counter()
            for n in range(N):
                await call(n)
            return N / (time.perf_counter() - t0)
        finally:
            await conn.close()


def _python(conn: asyncpg.Connection) -> Call:
    return lambda n: pgqueue.enqueue(conn, EVENT_TYPE, {"n": n})


def _sql_function(conn: asyncpg.Connection) -> Call:
    return lambda n: conn.fetchval(SQL_FUNCTION, EVENT_TYPE, _text(n))


def _plain(conn: asyncpg.Connection) -> Call:
    return lambda n: conn.execute(PLAIN_INSERT, EVENT_TYPE, _text(n))


def _pgqueuer(conn: asyncpg.Connection) -> Call:
    return producer(PGQUEUER, conn).one


async def run(bench: Bench) -> Figures:
    return {
        "enqueue.python": await _rate(bench, _python),
        "enqueue.sql_function": await _rate(bench, _sql_function),
        "enqueue.plain_insert": await _rate(bench, _plain),
        "enqueue.pgqueuer": await _rate(bench, _pgqueuer),
    }
