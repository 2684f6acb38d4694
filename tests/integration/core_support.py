"""Helpers shared by the test_core_* integration tests: counting registries, burst runs, rows.

Fixtures here are registered under their ``name=``; a test module imports the function
(``shared_dsn_fixture``, ``tx_fixture``) to make the fixture available.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from tenacity import stop_after_attempt, wait_none

import pgqueue

if TYPE_CHECKING:
    from tests.conftest import Databases

Calls = Counter[tuple[int, str]]
QUICK = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_none(), inline_max_wait=1.0)


def counting(
    registry: pgqueue.Registry,
    calls: Calls,
    event_type: str,
    name: str,
    *,
    behaviour: Callable[[pgqueue.Context], Awaitable[None]] | None = None,
    retry: pgqueue.RetryPolicy | None = None,
) -> None:
    """Register handler ``name`` that counts its invocations per (event id, handler)."""

    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        calls[(ctx.event_id, ctx.handler)] += 1
        if behaviour is not None:
            await behaviour(ctx)

    registry.add(event_type, handler, name=name, retry=retry)


async def run_burst(
    dsn: str, registry: pgqueue.Registry, timeout: float = 30.0, **settings: Any
) -> pgqueue.WorkerStats:
    """Run a burst worker to completion (fails the test if it hangs)."""
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(burst=True, **settings))
    return await asyncio.wait_for(worker.run(), timeout=timeout)


async def outbox_row(conn: asyncpg.Connection, event_id: int, schema: str = "pgqueue") -> Any:
    """The outbox row of ``event_id`` with ``handlers`` decoded."""
    row = await conn.fetchrow(f'SELECT * FROM "{schema}".outbox WHERE id = $1', event_id)
    assert row is not None, f"event {event_id} not found"
    data = dict(row)
    data["payload"] = json.loads(data["payload"])
    data["handlers"] = json.loads(data["handlers"]) if data["handlers"] is not None else None
    return data


async def handler_states(conn: asyncpg.Connection, event_id: int) -> dict[str, Any]:
    """The rows of pgqueue.handler_states for one event, by handler name."""
    rows = await conn.fetch(
        "SELECT handler, state, attempts, last_error FROM pgqueue.handler_states"
        " WHERE event_id = $1",
        event_id,
    )
    return {r["handler"]: dict(r) for r in rows}


# -- a shared database for tests that only run queries (rolled back after each test) ---------


@pytest.fixture(scope="module", name="shared_dsn")
def shared_dsn_fixture(_databases: Databases) -> Iterator[str]:
    """One migrated database for a whole module; tests use it only through ``tx``."""
    dsn = _databases.create()
    try:
        yield dsn
    finally:
        _databases.drop(urlsplit(dsn).path.lstrip("/"))


@pytest.fixture(name="tx")
async def tx_fixture(shared_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction that is rolled back at the end of the test.

    A statement expected to fail must run in a savepoint (``async with tx.transaction()``) so
    the test can keep querying afterwards.
    """
    connection = await asyncpg.connect(shared_dsn)
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close(timeout=5)
