"""pgqueue on psycopg 3 connections: commit, rollback, savepoint, many, once, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

import pgqueue
from tests.integration.adapter_support import (
    INSERT_ORDER,
    check_rejections,
    committed,
    committed_sync,
    create_orders,
    effect_ctx,
)


def test_sync_connection_commit_rollback_savepoint_many_once(db_dsn: str) -> None:
    import asyncio

    asyncio.run(create_orders(db_dsn))
    with psycopg.connect(db_dsn) as conn:
        with conn.transaction():  # committed: the row and its event
            conn.execute(INSERT_ORDER.format(n=1))
            first = pgqueue.enqueue_sync(conn, "order.placed", {"order": 1})
        with pytest.raises(RuntimeError), conn.transaction():  # rolled back: neither
            conn.execute(INSERT_ORDER.format(n=2))
            pgqueue.enqueue_sync(conn, "order.placed", {"order": 2})
            raise RuntimeError("payment declined")
        with conn.transaction():
            conn.execute(INSERT_ORDER.format(n=3))
            pgqueue.enqueue_sync(conn, "order.placed", {"order": 3})
            with pytest.raises(RuntimeError), conn.transaction():  # a savepoint, rolled back
                conn.execute(INSERT_ORDER.format(n=4))
                pgqueue.enqueue_sync(conn, "order.placed", {"order": 4})
                raise RuntimeError("gift wrap failed")
        with conn.transaction():
            conn.execute("INSERT INTO orders (id) VALUES (5), (6)")
            ids = pgqueue.enqueue_many_sync(
                conn,
                [
                    pgqueue.Event(event_type="order.placed", payload={"order": 5}),
                    pgqueue.Event(
                        event_type="order.placed", payload={"order": 6}, idempotency_key="o-6"
                    ),
                ],
            )
            again = pgqueue.enqueue_sync(conn, "order.placed", {"order": 6}, idempotency_key="o-6")
        assert first < ids[0] < ids[1] == again
        with conn.transaction():
            assert pgqueue.once_sync(conn, effect_ctx(first))
            assert not pgqueue.once_sync(conn, effect_ctx(first))
        with pytest.raises(RuntimeError), conn.transaction():
            assert pgqueue.once_sync(conn, effect_ctx(ids[0]))
            raise RuntimeError("effect failed")
        with conn.transaction():  # the rolled-back record does not count
            assert pgqueue.once_sync(conn, effect_ctx(ids[0]))
        with conn.transaction():
            check_rejections(pgqueue.enqueue_sync, conn)
        conn.rollback()
    assert committed_sync(db_dsn) == ([1, 3, 5, 6], [1, 3, 5, 6])


async def test_async_connection_commit_rollback_savepoint_many_once(db_dsn: str) -> None:
    await create_orders(db_dsn)
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        async with conn.transaction():
            await conn.execute(INSERT_ORDER.format(n=1))
            first = await pgqueue.enqueue(conn, "order.placed", {"order": 1})
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(INSERT_ORDER.format(n=2))
                await pgqueue.enqueue(conn, "order.placed", {"order": 2})
                raise RuntimeError("payment declined")
        async with conn.transaction():
            await conn.execute(INSERT_ORDER.format(n=3))
            await pgqueue.enqueue(
                conn, "order.placed", {"order": 3}, run_at=dt.datetime(2000, 1, 1), priority=2
            )
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(INSERT_ORDER.format(n=4))
                    await pgqueue.enqueue(conn, "order.placed", {"order": 4})
                    raise RuntimeError("gift wrap failed")
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (id) VALUES (5), (6)")
            ids = await pgqueue.enqueue_many(
                conn,
                [pgqueue.Event(event_type="order.placed", payload={"order": n}) for n in (5, 6)],
            )
        assert first < ids[0] < ids[1]
        async with conn.transaction():
            assert await pgqueue.once(conn, effect_ctx(first))
            assert not await pgqueue.once(conn, effect_ctx(first))
        with pytest.raises(pgqueue.PayloadError, match="outbox_event_type_format"):
            async with conn.transaction():
                await pgqueue.enqueue(conn, "has spaces!", {"order": 0})
        # A naive run_at is UTC, as with asyncpg (not the session's TimeZone).
        cursor = await conn.execute("SELECT run_at FROM pgqueue.outbox ORDER BY id")
        run_ats: list[Any] = [r[0] for r in await cursor.fetchall()]
        assert dt.datetime(2000, 1, 1, tzinfo=dt.UTC) in run_ats
    assert await committed(db_dsn) == ([1, 3, 5, 6], [1, 3, 5, 6])


async def test_wrong_flavour_fails_at_the_call_not_silently(db_dsn: str) -> None:
    """A sync connection given to the async enqueue fails at the call (an un-awaited
    coroutine would have enqueued nothing), and the other way round."""
    with psycopg.connect(db_dsn) as sync_conn:
        with pytest.raises(TypeError, match=r"enqueue\(\) was given a synchronous .*enqueue_sync"):
            pgqueue.enqueue(sync_conn, "order.placed", {"order": 1})  # no await: still fails
        with pytest.raises(TypeError, match=r"once\(\) was given a synchronous"):
            pgqueue.once(sync_conn, effect_ctx(1))
    async with await psycopg.AsyncConnection.connect(db_dsn) as async_conn:
        with pytest.raises(TypeError, match=r"enqueue_many_sync\(\) was given an asynchronous"):
            pgqueue.enqueue_many_sync(async_conn, [])
    with pytest.raises(TypeError, match=r"takes an asyncpg Connection .* not builtins\.str"):
        pgqueue.enqueue(db_dsn, "order.placed", {})
    with pytest.raises(TypeError, match=r"enqueue_sync\(\) takes a psycopg Connection"):
        pgqueue.enqueue_sync(object(), "order.placed", {})
