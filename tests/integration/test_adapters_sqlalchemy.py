"""pgqueue on SQLAlchemy sessions and connections, sync and async, on the real drivers."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import pgqueue
from tests.integration.adapter_support import (
    INSERT_ORDER,
    check_rejections,
    committed,
    committed_sync,
    create_orders,
    effect_ctx,
)


def _url(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])  # psycopg2: SQLAlchemy's default
def test_sync_session_and_connection(db_dsn: str, driver: str) -> None:
    asyncio.run(create_orders(db_dsn))
    engine = create_engine(_url(db_dsn, driver))
    try:
        with Session(engine) as session, session.begin():  # committed: the row and its event
            pgqueue.enqueue_sync(session, "order.placed", {"order": 1})  # the first statement
            session.execute(text(INSERT_ORDER.format(n=1)))
        with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
            pgqueue.enqueue_sync(session, "order.placed", {"order": 2})
            session.execute(text(INSERT_ORDER.format(n=2)))
            raise RuntimeError("payment declined")
        with Session(engine) as session, session.begin():
            session.execute(text(INSERT_ORDER.format(n=3)))
            pgqueue.enqueue_sync(session, "order.placed", {"order": 3})
            with pytest.raises(RuntimeError), session.begin_nested():  # savepoint, rolled back
                session.execute(text(INSERT_ORDER.format(n=4)))
                pgqueue.enqueue_sync(session, "order.placed", {"order": 4})
                raise RuntimeError("gift wrap failed")
        with engine.connect() as conn, conn.begin():  # a Core Connection
            conn.execute(text("INSERT INTO orders (id) VALUES (5), (6)"))
            ids = pgqueue.enqueue_many_sync(
                conn,
                [
                    pgqueue.Event(event_type="order.placed", payload={"order": 5}, priority=1),
                    pgqueue.Event(event_type="order.placed", payload={"order": 6}),
                ],
            )
            assert pgqueue.once_sync(conn, effect_ctx(ids[0]))
            assert not pgqueue.once_sync(conn, effect_ctx(ids[0]))
        scoped = scoped_session(sessionmaker(engine))  # the scoped proxy itself works too
        with scoped.begin():
            scoped.execute(text(INSERT_ORDER.format(n=7)))
            pgqueue.enqueue_sync(scoped, "order.placed", {"order": 7})
        scoped.remove()
        with Session(engine) as session:
            check_rejections(pgqueue.enqueue_sync, session)
            session.rollback()
        with (
            Session(engine) as session,
            pytest.raises(TypeError, match=r"enqueue\(\) was given a synchronous"),
        ):
            pgqueue.enqueue(session, "order.placed", {"order": 8})  # no await: fails anyway
    finally:
        engine.dispose()
    assert committed_sync(db_dsn) == ([1, 3, 5, 6, 7], [1, 3, 5, 6, 7])


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_async_session_and_connection(db_dsn: str, driver: str) -> None:
    await create_orders(db_dsn)
    engine = create_async_engine(_url(db_dsn, driver))
    make_session = async_sessionmaker(engine)
    try:
        async with make_session() as session, session.begin():
            await pgqueue.enqueue(session, "order.placed", {"order": 1})
            await session.execute(text(INSERT_ORDER.format(n=1)))
        # The first-statement case of the issue: the enqueue is the transaction's first
        # statement. Through the session it begins the transaction, so the rollback takes it.
        with pytest.raises(RuntimeError):
            async with make_session() as session, session.begin():
                await pgqueue.enqueue(session, "order.placed", {"order": 2})
                raise RuntimeError("payment declined")
        async with make_session() as session, session.begin():
            await session.execute(text(INSERT_ORDER.format(n=3)))
            await pgqueue.enqueue(session, "order.placed", {"order": 3})
            with pytest.raises(RuntimeError):
                async with session.begin_nested():
                    await session.execute(text(INSERT_ORDER.format(n=4)))
                    await pgqueue.enqueue(session, "order.placed", {"order": 4})
                    raise RuntimeError("gift wrap failed")
        async with engine.connect() as conn, conn.begin():
            await conn.execute(text("INSERT INTO orders (id) VALUES (5), (6)"))
            ids = await pgqueue.enqueue_many(
                conn,
                [
                    pgqueue.Event(event_type="order.placed", payload={"order": 5}),
                    pgqueue.Event(
                        event_type="order.placed",
                        payload={"order": 6},
                        idempotency_key="o-6",
                        run_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                    ),
                ],
            )
            assert ids == sorted(ids)
            assert await pgqueue.once(conn, effect_ctx(ids[0]))
            assert not await pgqueue.once(conn, effect_ctx(ids[0]))
        with pytest.raises(RuntimeError):
            async with engine.connect() as conn, conn.begin():
                await pgqueue.enqueue(conn, "order.placed", {"order": 7})
                raise RuntimeError("payment declined")
        with pytest.raises(pgqueue.PayloadError, match="constraint outbox_event_type_format"):
            async with make_session() as session, session.begin():
                await pgqueue.enqueue(session, "has spaces!", {"order": 0})
        async with make_session() as session:
            with pytest.raises(TypeError, match=r"enqueue_sync\(\) was given an asynchronous"):
                pgqueue.enqueue_sync(session, "order.placed", {"order": 9})
            assert isinstance(session, AsyncSession)
    finally:
        await engine.dispose()
    assert await committed(db_dsn) == ([1, 3, 5, 6], [1, 3, 5, 6])
