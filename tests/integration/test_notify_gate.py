"""The notify gate (sql/0011_producer_commit.sql) and the worker's sweep
(pgqueue/_worker/listener.py).

At commit, one producer transaction per queue at a time notifies; the others skip NOTIFY so
that their commits do not queue behind PostgreSQL's notify lock. A running worker must still
claim a skipping producer's event promptly after the gate holder's notification, even when
that producer's commit ends after the claim the notification started (late-committed events
below the claim floor: tests/integration/test_claim_floor.py). The worker here polls only once
a minute: an event that waited for the poll would fail the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import asyncpg

import pgqueue
from tests.helpers import wait_for

SLOW_POLL = 60.0
CHANNEL = "pgqueue.outbox"
GATE = "pgqueue.outbox gate"
SKIPPERS = "pgqueue.outbox skippers"

# A deferred constraint trigger that sleeps at commit, after outbox_notify (deferred events
# fire in the order they were queued: insert the outbox row first). It stretches a producer's
# COMMIT the way a slow WAL flush or a synchronous standby does.
SLOW_COMMIT = """
CREATE TABLE slow_commit (seconds float8 NOT NULL);
CREATE FUNCTION slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(NEW.seconds);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit_sleep AFTER INSERT ON slow_commit
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit_sleep();
"""

# Who holds the queue's gate (mode ExclusiveLock) or the skippers lock (ShareLock).
LOCK_HELD = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND mode = $3
  AND classid::bigint = (hashtext($1)::bigint & 4294967295)
  AND objid::bigint = (hashtext($2)::bigint & 4294967295)
"""


@contextlib.asynccontextmanager
async def running_worker(dsn: str, ran: set[int]) -> AsyncIterator[pgqueue.Worker]:
    registry = pgqueue.Registry()

    async def record(payload: dict[str, object], ctx: pgqueue.Context) -> None:
        ran.add(ctx.event_id)

    registry.add("gate.test", record, name="record")
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(poll_interval=SLOW_POLL))
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=15)


async def processed(conn: asyncpg.Connection, event_id: int) -> bool:
    state = await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id)
    return bool(state == "done")


async def held(conn: asyncpg.Connection, key: str, mode: str, queue: str = "default") -> int:
    return int(await conn.fetchval(LOCK_HELD, key, queue, mode))


async def listen(conn: asyncpg.Connection, payloads: list[str]) -> None:
    await conn.add_listener(CHANNEL, lambda _c, _p, _ch, payload: payloads.append(payload))


async def slow_producer(dsn: str, commit_seconds: float) -> tuple[asyncpg.Connection, int]:
    """A producer transaction with one event, left open; its COMMIT will take that long."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN")
    event_id = await pgqueue.enqueue(conn, "gate.test", {})
    await conn.execute("INSERT INTO slow_commit VALUES ($1)", commit_seconds)
    return conn, event_id


async def test_one_committer_notifies_the_one_committing_meanwhile_skips(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(SLOW_COMMIT)
    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    first, _ = await slow_producer(db_dsn, 2.0)
    second, _ = await slow_producer(db_dsn, 0.0)
    try:
        await listen(listener, payloads)
        committing = asyncio.create_task(first.execute("COMMIT"))
        await wait_for(lambda: held(conn, GATE, "ExclusiveLock"), message="no gate holder")
        await second.execute("COMMIT")  # while the first holds the gate: no NOTIFY
        await committing
        await pgqueue.enqueue(conn, "gate.test", {})  # alone: it notifies
        await wait_for(lambda: _count(payloads, 2), message=f"notifications: {payloads}")
        assert payloads == ["default", "default"]
    finally:
        for c in (first, second, listener):
            await c.close()


async def _count(payloads: list[str], n: int) -> bool:
    return len(payloads) >= n


async def _two(count: Awaitable[int]) -> bool:
    return await count >= 2


async def test_a_producer_that_skipped_notify_is_claimed_after_the_gate_holders_wakeup(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The window: the skipper's commit ends after the claim the notification started."""
    await conn.execute(SLOW_COMMIT)
    ran: set[int] = set()
    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    async with running_worker(db_dsn, ran) as worker:
        warm = await pgqueue.enqueue(conn, "gate.test", {})
        await wait_for(lambda: processed(conn, warm), message="first event never ran")
        holder, holder_event = await slow_producer(db_dsn, 1.5)
        skipper, skipper_event = await slow_producer(db_dsn, 4.0)
        try:
            await listen(listener, payloads)
            holder_commit = asyncio.create_task(holder.execute("COMMIT"))
            await wait_for(lambda: held(conn, GATE, "ExclusiveLock"), message="no gate holder")
            skipper_commit = asyncio.create_task(skipper.execute("COMMIT"))
            # The skipper went past the gate (like the holder, it holds the skippers lock, and
            # sleeps in its commit) while the holder still held the gate.
            await wait_for(lambda: _two(held(conn, SKIPPERS, "ShareLock")), message="no skipper")
            await holder_commit
            await wait_for(lambda: processed(conn, holder_event), message="holder's event")
            assert not await processed(conn, skipper_event)  # still committing
            await skipper_commit
            await wait_for(
                lambda: processed(conn, skipper_event),
                timeout=10,
                message="the skipping producer's event waited for the poll interval",
            )
        finally:
            for c in (holder, skipper, listener):
                await c.close()
    assert payloads == ["default"]  # the skipper sent nothing
    assert {holder_event, skipper_event} <= ran
    assert worker.stats.done >= 3


async def test_a_producer_that_cannot_register_as_a_skipper_notifies_for_itself(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Someone holds the skippers lock exclusively (an application's advisory lock with the
    same keys): a producer then cannot count on a sweep, and never waits for that lock."""
    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    sweeper = await asyncpg.connect(db_dsn)
    try:
        await listen(listener, payloads)
        async with sweeper.transaction():
            await sweeper.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1), hashtext('default'))", SKIPPERS
            )
            await pgqueue.enqueue(conn, "gate.test", {})  # never waits for the lock holder
        await wait_for(lambda: _count(payloads, 1), message="no notification")
        assert payloads == ["default!"]
    finally:
        await listener.close()
        await sweeper.close()


async def test_every_queue_of_a_transaction_is_notified(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    try:
        await listen(listener, payloads)
        async with conn.transaction():
            for queue in ("a", "b", "a"):
                await pgqueue.enqueue(conn, "gate.test", {}, queue=queue)
            await conn.execute(
                "INSERT INTO pgqueue.outbox (event_type, queue)"
                " SELECT 'gate.test', 'c' FROM generate_series(1, 100)"
            )
        await wait_for(lambda: _count(payloads, 3), message=f"notifications: {payloads}")
        assert sorted(payloads) == ["a", "b", "c"]
    finally:
        await listener.close()


async def test_a_rolled_back_savepoint_does_not_swallow_the_notification(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The first row of a queue arms the trigger for the transaction; a savepoint rolled back
    with that row disarms it again, so the next row's commit still notifies."""
    payloads: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    try:
        await listen(listener, payloads)
        async with conn.transaction():
            with contextlib.suppress(RuntimeError):
                async with conn.transaction():  # a savepoint
                    await pgqueue.enqueue(conn, "gate.test", {})
                    raise RuntimeError("roll the savepoint back")
            kept = await pgqueue.enqueue(conn, "gate.test", {})
        await wait_for(lambda: _count(payloads, 1), message="no notification")
        assert payloads == ["default"]
        assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 1
        assert await conn.fetchval("SELECT id FROM pgqueue.outbox") == kept
    finally:
        await listener.close()
