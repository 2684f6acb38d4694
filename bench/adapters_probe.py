"""What enqueueing through each driver adapter costs, against the same driver's hand-written
INSERT of the same event in the same transaction.

``python -m bench.adapters_probe [--dsn ADMIN_DSN] [--transactions 1000] [--rounds 3]
[--only asyncpg,psycopg,sqlalchemy,django]``

Per driver, each transaction inserts one ``orders`` row and one event and commits: once with
``pgqueue.enqueue`` / ``enqueue_sync`` on the driver's connection or session, once with the
driver's own ``INSERT INTO pgqueue.outbox (event_type, payload) VALUES (...)``. The two
alternate round by round in one fresh database per driver. Printed: microseconds per
transaction, wall clock and this process's CPU (medians of the rounds), and their ratios.
The commit dominates the wall clock (and a busy machine makes it noisy); the client CPU shows
the adapter's own work (the checks, the rewritten placeholders, the dispatch on the
connection's type) against the driver's. Needs the dev extras (psycopg, SQLAlchemy, Django).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import asyncpg

import pgqueue

from ._db import DEFAULT_ADMIN_DSN, Databases

# The hand-written side encodes it per transaction too, as an application would.
PAYLOAD = {"order_id": 42, "customer": "c-1", "total": 99.5}
ORDERS = "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int)"
Timed = Callable[[int, bool], Awaitable[float]]  # (transactions, via pgqueue) -> seconds


async def _asyncpg(dsn: str) -> Timed:
    conn = await asyncpg.connect(dsn)

    async def run(n: int, ours: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders (total) VALUES (1)")
                if ours:
                    await pgqueue.enqueue(conn, "order.placed", PAYLOAD)
                else:
                    await conn.fetchval(
                        "INSERT INTO pgqueue.outbox (event_type, payload)"
                        " VALUES ($1, $2::jsonb) RETURNING id",
                        "order.placed",
                        json.dumps(PAYLOAD),
                    )
        return time.perf_counter() - started

    return run


async def _psycopg(dsn: str) -> Timed:
    import psycopg

    conn = psycopg.connect(dsn)

    async def run(n: int, ours: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            with conn.transaction():
                conn.execute("INSERT INTO orders (total) VALUES (1)")
                if ours:
                    pgqueue.enqueue_sync(conn, "order.placed", PAYLOAD)
                else:
                    conn.execute(
                        "INSERT INTO pgqueue.outbox (event_type, payload)"
                        " VALUES (%s, %s::jsonb) RETURNING id",
                        ("order.placed", json.dumps(PAYLOAD)),
                    ).fetchone()
        return time.perf_counter() - started

    return run


async def _sqlalchemy_async(dsn: str) -> Timed:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    make = async_sessionmaker(engine)
    insert = text(
        "INSERT INTO pgqueue.outbox (event_type, payload)"
        " VALUES (:t, CAST(:p AS jsonb)) RETURNING id"
    )
    order = text("INSERT INTO orders (total) VALUES (1)")

    async def run(n: int, ours: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            async with make() as session, session.begin():
                await session.execute(order)
                if ours:
                    await pgqueue.enqueue(session, "order.placed", PAYLOAD)
                else:
                    (
                        await session.execute(
                            insert, {"t": "order.placed", "p": json.dumps(PAYLOAD)}
                        )
                    ).all()
        return time.perf_counter() - started

    return run


async def _sqlalchemy_sync(dsn: str) -> Timed:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    insert = text(
        "INSERT INTO pgqueue.outbox (event_type, payload)"
        " VALUES (:t, CAST(:p AS jsonb)) RETURNING id"
    )
    order = text("INSERT INTO orders (total) VALUES (1)")

    async def run(n: int, ours: bool) -> float:
        started = time.perf_counter()
        for _ in range(n):
            with Session(engine) as session, session.begin():
                session.execute(order)
                if ours:
                    pgqueue.enqueue_sync(session, "order.placed", PAYLOAD)
                else:
                    values = {"t": "order.placed", "p": json.dumps(PAYLOAD)}
                    session.execute(insert, values).all()
        return time.perf_counter() - started

    return run


async def _django(dsn: str) -> Timed:
    import django
    from django.conf import settings
    from django.db import connections, transaction

    url = urlsplit(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": url.username or "",
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
    }
    settings.configure(DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    # Django refuses blocking calls on an event loop's thread, and its connections are per
    # thread: one thread of its own runs every round.
    thread = ThreadPoolExecutor(1)

    async def run(n: int, ours: bool) -> float:
        return await asyncio.get_running_loop().run_in_executor(thread, rounds, n, ours)

    def rounds(n: int, ours: bool) -> float:
        conn = connections["default"]  # this thread's
        started = time.perf_counter()
        for _ in range(n):
            with transaction.atomic(), conn.cursor() as cursor:
                cursor.execute("INSERT INTO orders (total) VALUES (1)")
                if ours:
                    pgqueue.enqueue_sync(conn, "order.placed", PAYLOAD)
                else:
                    cursor.execute(
                        "INSERT INTO pgqueue.outbox (event_type, payload)"
                        " VALUES (%s, %s::jsonb) RETURNING id",
                        ("order.placed", json.dumps(PAYLOAD)),
                    )
                    cursor.fetchone()
        return time.perf_counter() - started

    return run


DRIVERS: dict[str, Callable[[str], Awaitable[Timed]]] = {
    "asyncpg": _asyncpg,
    "psycopg (sync)": _psycopg,
    "SQLAlchemy AsyncSession (asyncpg)": _sqlalchemy_async,
    "SQLAlchemy Session (psycopg)": _sqlalchemy_sync,
    "Django (psycopg)": _django,
}


async def main(admin_dsn: str, transactions: int, rounds: int, only: set[str]) -> None:
    databases = Databases(admin_dsn)
    await databases.setup()
    print(
        f"python -m bench.adapters_probe --dsn {admin_dsn} --transactions {transactions} "
        f"--rounds {rounds}"
    )
    print(
        f"{'us per transaction':36} {'wall: hand':>8} {'pgqueue':>8} {'ratio':>6}   "
        f"{'client CPU: hand':>8} {'pgqueue':>8} {'ratio':>6}"
    )
    try:
        for label, make in DRIVERS.items():
            if only and label.split()[0].lower() not in only:
                continue
            async with databases.fresh() as dsn:
                setup = await asyncpg.connect(dsn)
                await setup.execute(ORDERS)
                await setup.close()
                run = await make(dsn)
                await run(100, True)  # warm up: connections, statement caches
                await run(100, False)
                wall: dict[bool, list[float]] = {True: [], False: []}
                cpu: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(rounds):
                    for ours in (False, True):
                        before = time.process_time()
                        wall[ours].append(await run(transactions, ours) / transactions * 1e6)
                        cpu[ours].append((time.process_time() - before) / transactions * 1e6)
                w0, w1 = statistics.median(wall[False]), statistics.median(wall[True])
                c0, c1 = statistics.median(cpu[False]), statistics.median(cpu[True])
                print(
                    f"{label:36} {w0:8.0f} {w1:8.0f} {w1 / w0:6.2f}   "
                    f"{c0:8.0f} {c1:8.0f} {c1 / c0:6.2f}"
                )
    finally:
        await databases.teardown()


def cli() -> None:
    """Parse the arguments and run the probe."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="comma-separated drivers to run, by their first word"
    )
    args = parser.parse_args()
    only = {name.strip().lower() for name in args.only.split(",") if name.strip()}
    asyncio.run(main(args.dsn, args.transactions, args.rounds, only))


if __name__ == "__main__":
    cli()
