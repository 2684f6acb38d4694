"""sql/roles.sql grants exactly the columns each role writes (issue 11, item 8).

Every forbidden write is tried as the role itself (SET ROLE, as tests/integration/
test_security.py does); what the role needs is proven by running the real thing as a login
member of it: a worker with retries, a concurrency limit, pgqueue.once and a schedule; a
producer's enqueue and enqueue_many with repeated idempotency keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from tenacity import stop_after_attempt, wait_fixed

import pgqueue
from pgqueue._migrate import roles_sql
from tests.helpers import wait_for
from tests.integration.test_security import _worker_login

# Columns a producer wrote and nobody else may change; the worker writes none of them.
PRODUCER_COLUMNS = {
    "payload": "'{\"evil\": true}'",
    "event_type": "'evil.flood'",
    "created_at": "'2000-01-01'",
    "idempotency_key": "'stolen'",
    "queue": "'other'",
    "priority": "10",
    "headers": "'{}'",
}
WORKER_FORBIDDEN = [
    *(
        f"UPDATE pgqueue.outbox SET {column} = {value}"
        for column, value in PRODUCER_COLUMNS.items()
    ),
    "DELETE FROM pgqueue.outbox",
    "TRUNCATE pgqueue.outbox",
    "UPDATE pgqueue.schedules SET name = 'renamed'",
    "DELETE FROM pgqueue.schedules",
    "INSERT INTO pgqueue.schedules (name, expression, event_type, last_tick) "
    "VALUES ('x', '* * * * *', 'x', '2999-01-01')",
    "INSERT INTO pgqueue.effects (event_id, handler, created_at) VALUES (1, 'x', now())",
    "UPDATE pgqueue.effects SET handler = 'x'",
    "DELETE FROM pgqueue.effects",
    "UPDATE pgqueue.handler_slots SET handler = 'x'",
    "UPDATE pgqueue.handler_slots SET slot = 99",
    "DELETE FROM pgqueue.handler_slots",
    "UPDATE pgqueue.handler_limits SET override = 100",
    "UPDATE pgqueue.handler_limits SET handler = 'x'",
    "DELETE FROM pgqueue.handler_limits",
    "INSERT INTO pgqueue.migrations (version, name) VALUES (999, 'x')",
    "UPDATE pgqueue.migrations SET name = 'x'",
    "INSERT INTO pgqueue.replays (filter, started_at, last_id) VALUES ('{}', now(), 0)",
    "UPDATE pgqueue.replays SET last_id = 0",
]

QUICK = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.05))


@pytest.fixture
async def roles(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await conn.execute(roles_sql("pgqueue"))
    yield conn
    await conn.execute("RESET ROLE")


async def test_the_worker_role_may_write_no_column_but_its_own(
    roles: asyncpg.Connection,
) -> None:
    conn = roles
    event = await pgqueue.enqueue(conn, "order.placed", {"n": 1}, idempotency_key="k")
    await conn.execute(
        "INSERT INTO pgqueue.schedules (name, expression, event_type) "
        "VALUES ('s', '* * * * *', 's')"
    )
    await conn.execute("INSERT INTO pgqueue.effects (event_id, handler) VALUES ($1, 'h')", event)
    await conn.execute("INSERT INTO pgqueue.handler_limits (handler, concurrency) VALUES ('h', 2)")
    await conn.execute(
        "INSERT INTO pgqueue.replays (filter, started_at, last_id) VALUES ('{}', now(), 0)"
    )
    before = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", event)
    await conn.execute("SET ROLE pgqueue_worker")
    allowed: list[str] = []
    for statement in WORKER_FORBIDDEN:
        try:
            async with conn.transaction():
                await conn.execute(statement)
            allowed.append(statement)
        except asyncpg.InsufficientPrivilegeError:
            pass
    assert allowed == []
    await conn.execute("RESET ROLE")
    assert await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", event) == before


async def test_a_worker_role_login_runs_retries_limits_once_and_schedules(
    roles: asyncpg.Connection, db_dsn: str
) -> None:
    conn = roles
    failed: set[int] = set()
    registry = pgqueue.Registry()

    @registry.on("order.placed", retry=QUICK, concurrency=2)
    async def crm(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        if ctx.event_id not in failed:  # fails once: a retry record is written
            failed.add(ctx.event_id)
            raise ConnectionError("first try fails")
        assert ctx.pool is not None
        async with ctx.pool.acquire() as c, c.transaction():
            await pgqueue.once(c, ctx)
            await pgqueue.enqueue(c, "order.followup", {}, idempotency_key=f"f-{ctx.event_id}")

    @registry.on("order.followup")
    async def followup(payload: dict[str, Any]) -> None:
        return None

    @registry.on("tick.every_second")
    async def tick(payload: dict[str, Any]) -> None:
        return None

    registry.schedule("* * * * * *", "tick.every_second")
    ids = [await pgqueue.enqueue(conn, "order.placed", {"n": n}) for n in range(3)]
    worker = pgqueue.Worker(
        await _worker_login(conn, db_dsn), registry, pgqueue.WorkerSettings(poll_interval=0.1)
    )
    task = asyncio.create_task(worker.run())
    try:

        async def settled() -> bool:
            if task.done():
                task.result()  # a permission error stops the worker: show it
            states = await conn.fetch(
                "SELECT event_type, state FROM pgqueue.outbox WHERE state <> 'done'"
            )
            ticks = await conn.fetchval(
                "SELECT count(*) FROM pgqueue.outbox WHERE event_type = 'tick.every_second'"
                " AND state = 'done'"
            )
            return not states and ticks >= 1

        await wait_for(settled, timeout=30, message="the worker role could not do its work")
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    rows = await conn.fetch("SELECT attempt, handlers FROM pgqueue.outbox WHERE id = ANY($1)", ids)
    assert all(r["handlers"] is not None for r in rows)  # the retry wrote its record
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.effects") == 3
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE event_type = 'order.followup'"
        )
        == 3
    )


async def test_the_producer_cannot_read_keys_yet_enqueue_finds_a_used_one(
    roles: asyncpg.Connection,
) -> None:
    conn = roles
    secret = "signup:alice@example.com"
    first = await pgqueue.enqueue(conn, "user.signup", {}, idempotency_key=secret)
    await conn.execute("SET ROLE pgqueue_producer")
    for statement in (
        "SELECT idempotency_key FROM pgqueue.outbox",
        "SELECT id FROM pgqueue.outbox WHERE idempotency_key = 'x'",
        "SELECT count(*) FROM pgqueue.outbox WHERE idempotency_key LIKE 's%'",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(statement)
    async with conn.transaction():
        assert await pgqueue.enqueue(conn, "user.signup", {}, idempotency_key=secret) == first
        new = await pgqueue.enqueue(conn, "user.signup", {}, idempotency_key="signup:bob")
        plain = await pgqueue.enqueue(conn, "user.signup", {})
        events = [
            pgqueue.Event(event_type="user.signup", payload={}, idempotency_key=key)
            for key in ["signup:carol", secret, None, "signup:carol", "signup:bob", None]
        ]
        many = await pgqueue.enqueue_many(conn, events)
        assert (
            await conn.fetchval("SELECT pgqueue.enqueue('user.signup', '{}', NULL, $1)", secret)
            == first
        )
    assert len({new, plain, first}) == 3
    carol = many[0]
    assert (many[1], many[3], many[4]) == (first, carol, new)
    assert len({carol, many[2], many[5], first, new, plain}) == 6  # the unkeyed ones are new
    await conn.execute("RESET ROLE")
    keys = dict(await conn.fetch("SELECT id, idempotency_key FROM pgqueue.outbox"))
    assert keys[carol] == "signup:carol" and keys[many[2]] is None and keys[many[5]] is None
    assert many[2] < many[5]  # input order
