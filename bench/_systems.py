"""The two queues under test, behind one small interface: enqueue one, enqueue many, count.

pgqueue is driven through its public API (``pgqueue.enqueue``/``enqueue_many``/``Worker``);
PgQueuer through its documented public API (``Queries.enqueue`` with a scalar or with lists,
``PgQueuer(AsyncpgDriver(conn))``, ``@pgq.entrypoint``, ``pgq.qm.run(batch_size=, mode=)``).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import asyncpg

import pgqueue

from . import minimal
from ._db import checkpoint

EVENT_TYPE = "bench.event"  # pgqueue event type
ENTRYPOINT = "bench"  # PgQueuer entrypoint

PGQUEUE = "pgqueue"
PGQUEUER = "pgqueuer"
MINIMAL = "minimal"  # the reference loop of bench/minimal.py (drain only)

# Events not yet finished. PgQueuer deletes a job from its queue table when it completes
# (and logs it to pgqueuer_log), so its remaining rows are exactly the unfinished jobs.
REMAINING = {
    PGQUEUE: "SELECT count(*) FROM pgqueue.outbox WHERE state IN ('pending', 'running')",
    PGQUEUER: "SELECT count(*) FROM pgqueuer",
    MINIMAL: minimal.REMAINING,
}
DONE = {
    PGQUEUE: "SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'",
    PGQUEUER: "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
    MINIMAL: minimal.DONE,
}
TABLE = {PGQUEUE: "pgqueue.outbox", PGQUEUER: "pgqueuer", MINIMAL: minimal.TABLE}


class Producer(Protocol):
    """Enqueue through one system's public API on one connection (autocommit)."""

    async def one(self, n: int) -> int: ...

    async def many(self, start: int, count: int) -> None: ...


class PgqueueProducer:
    """``pgqueue.enqueue`` / ``pgqueue.enqueue_many``."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def one(self, n: int) -> int:
        return await pgqueue.enqueue(self.conn, EVENT_TYPE, {"n": n})

    async def many(self, start: int, count: int) -> None:
        events = [
            pgqueue.Event(event_type=EVENT_TYPE, payload={"n": n})
            for n in range(start, start + count)
        ]
        await pgqueue.enqueue_many(self.conn, events)


class PgqueuerProducer:
    """PgQueuer ``Queries.enqueue`` (scalar arguments = one job, lists = a batch)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.queries = Queries(AsyncpgDriver(conn))

    async def one(self, n: int) -> int:
        ids = await self.queries.enqueue(ENTRYPOINT, payload_bytes(n))
        return int(ids[0])

    async def many(self, start: int, count: int) -> None:
        await self.queries.enqueue(
            [ENTRYPOINT] * count,
            [payload_bytes(n) for n in range(start, start + count)],
            [0] * count,
        )


class MinimalProducer:
    """The reference table's plain INSERTs."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def one(self, n: int) -> int:
        return await minimal.enqueue(self.conn, {"n": n})

    async def many(self, start: int, count: int) -> None:
        await minimal.enqueue_many(self.conn, [{"n": n} for n in range(start, start + count)])


def payload_bytes(n: int) -> bytes:
    """The same JSON payload as pgqueue's, as the bytes PgQueuer takes."""
    return json.dumps({"n": n}, separators=(",", ":")).encode()


def producer(system: str, conn: asyncpg.Connection) -> Producer:
    """The producer of ``system`` on ``conn``."""
    if system == MINIMAL:
        return MinimalProducer(conn)
    return PgqueueProducer(conn) if system == PGQUEUE else PgqueuerProducer(conn)


async def prefill(system: str, dsn: str, count: int, chunk: int = 1000) -> None:
    """Enqueue ``count`` events with the batch API, then VACUUM ANALYZE and CHECKPOINT."""
    conn = await asyncpg.connect(dsn)
    try:
        p = producer(system, conn)
        for start in range(0, count, chunk):
            await p.many(start, min(chunk, count - start))
        await conn.execute(f"VACUUM ANALYZE {TABLE[system]}")
        await checkpoint(conn)
    finally:
        await conn.close()


def proc_status() -> dict[str, Any]:
    """This process's VmHWM (peak RSS) and VmRSS in kB, from /proc/self/status."""
    out: dict[str, Any] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out
