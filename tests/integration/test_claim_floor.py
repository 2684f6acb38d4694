"""The claim's lower bound on run_at (pgqueue/_worker/floor.py) never strands an event.

A running worker reads the ready index from (last short claim's time - FLOOR_MARGIN) on; the
rows that bound can miss (a past run_at, a producer transaction open longer than the margin)
must still run, and promptly: their commit's notification (or the sweep after the gate
holder's, tests/integration/test_notify_gate.py) makes the worker's next claim read the whole
index (issue 11: they waited for the poll interval). The worker here polls once a minute, so
an event that waited for the poll fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

import pgqueue
from pgqueue._worker.floor import FLOOR_MARGIN
from tests.helpers import wait_for


@contextlib.asynccontextmanager
async def running_worker(dsn: str, ran: set[int]) -> AsyncIterator[pgqueue.Worker]:
    registry = pgqueue.Registry()

    async def record(payload: dict[str, object], ctx: pgqueue.Context) -> None:
        ran.add(ctx.event_id)

    registry.add("floor.test", record, name="record")
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(poll_interval=60.0))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=15)


async def processed(conn: asyncpg.Connection, event_id: int) -> bool:
    state = await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id)
    return bool(state == "done")


async def test_event_enqueued_with_a_past_run_at_runs_on_a_busy_worker(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    ran: set[int] = set()
    async with running_worker(db_dsn, ran):
        first = await pgqueue.enqueue(conn, "floor.test", {})
        await wait_for(lambda: processed(conn, first), message="first event never ran")
        past = await conn.fetchval(
            "SELECT pgqueue.enqueue('floor.test', '{}', now() - interval '1 hour')"
        )
        await wait_for(
            lambda: processed(conn, past),
            timeout=10,
            message="an event with a past run_at waited for the poll interval",
        )
    assert {first, past} <= ran


async def test_event_from_a_transaction_open_longer_than_the_margin_runs(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    ran: set[int] = set()
    producer = await asyncpg.connect(db_dsn)
    try:
        async with running_worker(db_dsn, ran):
            tx = producer.transaction()
            await tx.start()
            late = await pgqueue.enqueue(producer, "floor.test", {})
            started = await producer.fetchval("SELECT now()")

            # Keep events flowing until a short claim ran well past the open transaction's
            # start plus the margin: the bounded claims no longer read its row's run_at.
            async def bound_moved_past() -> bool:
                event_id = await pgqueue.enqueue(conn, "floor.test", {})
                await wait_for(lambda: processed(conn, event_id), message="event never ran")
                age = await conn.fetchval("SELECT extract(epoch FROM now() - $1)", started)
                return float(age) > FLOOR_MARGIN + 0.5

            await wait_for(bound_moved_past, timeout=20, interval=0.2)
            await tx.commit()
            await wait_for(
                lambda: processed(conn, late),
                timeout=10,
                message="a long transaction's event waited for the poll interval",
            )
    finally:
        await producer.close()
    assert late in ran
