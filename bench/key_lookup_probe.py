"""What the producer's INSERT costs with and without naming idempotency_key as its ON CONFLICT
target (migration 0012: the target needs SELECT on the key column, a bare DO NOTHING does not).

``python -m bench.key_lookup_probe [--dsn DSN] [--rows 5000] [--rounds 5]``

On one fresh database, alternating the forms round by round: single-row inserts (``enqueue``),
without a key and with a fresh key, and 1,000-row ``INSERT ... SELECT FROM unnest`` with keys
(``enqueue_many``). Each round runs inside one transaction, rolled back: what differs between
the forms is the statement's own cost, and a commit per row (an fsync wait on a shared disk)
made the first runs of this probe all noise (4-24 ms per row, rounds disagreeing 5x). Prints
the median microseconds per row of each form over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
import uuid

import asyncpg

from ._db import DEFAULT_ADMIN_DSN, Databases

COLUMNS = "(event_type, payload, run_at, idempotency_key, queue, priority)"
VALUES = "VALUES ($1, $2::jsonb, now(), $3, 'default', 0)"
TARGET = "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
ONE = {
    "target (before)": f"INSERT INTO pgqueue.outbox {COLUMNS} {VALUES} {TARGET} RETURNING id",
    "bare DO NOTHING (after)": (
        f"INSERT INTO pgqueue.outbox {COLUMNS} {VALUES} ON CONFLICT DO NOTHING RETURNING id"
    ),
    "no ON CONFLICT": f"INSERT INTO pgqueue.outbox {COLUMNS} {VALUES} RETURNING id",
}
MANY_SOURCE = """
SELECT t, p::jsonb, now(), k, 'default', 0
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS i(t, p, k, n) ORDER BY n
"""
MANY = {
    "target (before)": f"INSERT INTO pgqueue.outbox {COLUMNS} {MANY_SOURCE} {TARGET} "
    "RETURNING id, idempotency_key",
    "bare DO NOTHING (after)": f"INSERT INTO pgqueue.outbox {COLUMNS} {MANY_SOURCE} "
    "ON CONFLICT DO NOTHING RETURNING id",
}


async def single(conn: asyncpg.Connection, sql: str, rows: int, keyed: bool) -> float:
    keys = [uuid.uuid4().hex if keyed else None for _ in range(rows)]
    tx = conn.transaction()
    await tx.start()
    try:
        start = time.perf_counter()
        for key in keys:
            await conn.fetchval(sql, "bench.key", '{"n": 1}', key)
        return (time.perf_counter() - start) / rows * 1e6
    finally:
        await tx.rollback()


async def many(conn: asyncpg.Connection, sql: str, rows: int) -> float:
    chunks = [[uuid.uuid4().hex for _ in range(1000)] for _ in range(rows // 1000)]
    tx = conn.transaction()
    await tx.start()
    try:
        start = time.perf_counter()
        for keys in chunks:
            await conn.fetch(sql, ["bench.key"] * 1000, ['{"n": 1}'] * 1000, keys)
        return (time.perf_counter() - start) / rows * 1e6
    finally:
        await tx.rollback()


async def main(args: argparse.Namespace) -> None:
    db = Databases(args.dsn)
    await db.setup()
    results: dict[str, list[float]] = {}
    try:
        async with db.fresh() as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                for sql in itertools.chain(ONE.values(), MANY.values()):  # warm up, prepare
                    await (
                        single(conn, sql, 200, True)
                        if sql in ONE.values()
                        else many(conn, sql, 1000)
                    )
                for _ in range(args.rounds):
                    for name, sql in ONE.items():
                        for keyed in (False, True):
                            label = f"enqueue, {'fresh key' if keyed else 'no key'}: {name}"
                            value = await single(conn, sql, args.rows, keyed)
                            results.setdefault(label, []).append(value)
                    for name, sql in MANY.items():
                        value = await many(conn, sql, args.rows * 4)
                        results.setdefault(f"enqueue_many, keys: {name}", []).append(value)
            finally:
                await conn.close()
    finally:
        await db.teardown()
    for label, values in results.items():
        print(f"{label:58s} {statistics.median(values):7.2f} us/row  (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
    print(f"command: python -m bench.key_lookup_probe --rows {args.rows} --rounds {args.rounds}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
