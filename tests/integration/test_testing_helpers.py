"""pgqueue.testing's drain and assertions against the real outbox (the fixtures of this
repository's conftest; the plugin itself is tested in test_testing_plugin.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from tenacity import stop_after_attempt, wait_fixed

import pgqueue
from pgqueue.testing import assert_dead, assert_enqueued, assert_processed, drain, enqueued

# A wait the worker makes durable: the event's run_at moves ten minutes on.
DURABLE = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(600))


def flaky_registry(failures: int) -> tuple[pgqueue.Registry, list[int]]:
    """One handler of "t" that fails its first ``failures`` attempts; records every attempt."""
    registry = pgqueue.Registry()
    attempts: list[int] = []

    @registry.on("t", retry=DURABLE)
    async def flaky(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt <= failures:
            raise ConnectionError(f"attempt {ctx.attempt} failed")

    return registry, attempts


async def test_with_scheduled_runs_durable_retries_to_the_end(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, attempts = flaky_registry(failures=2)
    event_id = await pgqueue.enqueue(conn, "t", {})

    stats = await drain(db_dsn, registry)

    assert (stats.claimed, stats.retried, attempts) == (1, 1, [1])
    [event] = await assert_enqueued(conn, "t", state="pending")
    assert event.run_at is not None and event.run_at > dt.datetime.now(dt.UTC)
    assert event.handlers["flaky"].error == "ConnectionError: attempt 1 failed"

    stats = await drain(db_dsn, registry, with_scheduled=True)

    assert (stats.claimed, stats.retried, stats.done, attempts) == (2, 1, 1, [1, 2, 3])
    event = await assert_processed(conn, event_id)
    assert event.handlers["flaky"].attempts == 3


async def test_with_scheduled_ends_a_failing_handler_dead_and_leaves_other_queues(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, attempts = flaky_registry(failures=99)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    event_id = await pgqueue.enqueue(conn, "t", {}, run_at=later)
    elsewhere = await pgqueue.enqueue(conn, "t", {}, run_at=later, queue="other")

    stats = await drain(db_dsn, registry, with_scheduled=True)

    assert (stats.claimed, stats.dead, attempts) == (3, 1, [1, 2, 3])
    await assert_dead(conn, event_id, handler="flaky", error="attempt 3 failed")
    [pending] = await enqueued(conn, "t", state="pending")
    assert (pending.id, pending.run_at) == (elsewhere, later)


async def test_drain_that_does_not_finish_fails_with_a_clear_error(db_dsn: str) -> None:
    registry = pgqueue.Registry()

    async def hang(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    registry.add("t", hang, timeout=None)
    connection = await asyncpg.connect(db_dsn)
    try:
        await pgqueue.enqueue(connection, "t", {})
    finally:
        await connection.close()

    with pytest.raises(AssertionError, match=r"drain did not finish within 3s: a handler hangs"):
        await drain(db_dsn, registry, timeout=3)
