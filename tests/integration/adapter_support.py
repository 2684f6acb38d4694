"""Shared by test_adapters_*: the business table, the worker that runs what was committed,
and the checks every adapter must pass."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest

import pgqueue
from pgqueue._names import EVENT_TYPE_RULE
from tests.integration.core_support import run_burst

ORDERS = "CREATE TABLE orders (id int PRIMARY KEY)"
INSERT_ORDER = "INSERT INTO orders (id) VALUES ({n})"  # n: an int from the test itself


async def create_orders(dsn: str) -> None:
    """The application's own table, next to the outbox."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(ORDERS)
    finally:
        await conn.close()


async def committed(dsn: str) -> tuple[list[int], list[int]]:
    """Run a burst worker; return (orders whose event a handler ran, orders in the table),
    both sorted. The outbox must hold no event beyond those the handler ran."""
    registry, ran = pgqueue.Registry(), []

    @registry.on("order.placed")
    async def fulfil(payload: dict[str, Any]) -> None:
        ran.append(payload["order"])

    await run_burst(dsn, registry)
    conn = await asyncpg.connect(dsn)
    try:
        rows = [r[0] for r in await conn.fetch("SELECT id FROM orders ORDER BY id")]
        events = await conn.fetchval("SELECT count(*) FROM pgqueue.outbox")
        not_done = await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state <> 'done'")
    finally:
        await conn.close()
    assert events == len(ran) and not_done == 0, (events, ran, not_done)
    return sorted(ran), rows


def committed_sync(dsn: str) -> tuple[list[int], list[int]]:
    """:func:`committed` from a sync test."""
    return asyncio.run(committed(dsn))


def check_rejections(enqueue: Any, conn: Any) -> None:
    """A bad event type reaches the database's constraint and comes back as the same one-line
    PayloadError as from asyncpg (``enqueue`` is a sync call wrapper)."""
    with pytest.raises(pgqueue.PayloadError) as info:
        enqueue(conn, "has spaces!", {"order": 0})
    assert str(info.value) == (
        f"event rejected by constraint outbox_event_type_format: the event type must be "
        f"{EVENT_TYPE_RULE}"
    )
    with pytest.raises(pgqueue.PayloadError, match="payload must be a JSON object"):
        enqueue(conn, "order.placed", [1, 2])


def effect_ctx(event_id: int) -> pgqueue.Context:
    """The context a handler ``fulfil`` of event ``event_id`` would get (for once/once_sync)."""
    return pgqueue.Context(event_id, "order.placed", "fulfil", 1, dt.datetime.now(dt.UTC))
