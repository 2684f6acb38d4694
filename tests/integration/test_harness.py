"""The database harness itself: cloned, migrated, isolated databases."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
import pytest

from tests.helpers import run_cli, wait_for

if TYPE_CHECKING:
    from pgqueue._scratchdb import ScratchDatabases


async def test_cloned_database_has_the_migrated_outbox(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval("SELECT to_regclass('pgqueue.outbox') IS NOT NULL")
    assert await conn.fetchval("SELECT max(version) FROM pgqueue.migrations") >= 1


@pytest.mark.parametrize("run", ["first", "second"])
async def test_each_test_starts_empty(conn: asyncpg.Connection, template_db: str, run: str) -> None:
    # Both runs commit a row; if they shared a database, the second would see the first's.
    assert await conn.fetchval("SELECT current_database()") != template_db
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0
    await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ($1)", f"marker.{run}")


async def test_databases_are_distinct_and_isolated(
    database_factory: Callable[..., str], admin_dsn: str
) -> None:
    first, second = database_factory(), database_factory()
    assert first != second
    a = await asyncpg.connect(first)
    b = await asyncpg.connect(second)
    try:
        await a.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('marker')")
        assert await a.fetchval("SELECT count(*) FROM pgqueue.outbox") == 1
        assert await b.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0
    finally:
        await a.close()
        await b.close()


async def test_unmigrated_database_is_empty(database_factory: Callable[..., str]) -> None:
    c = await asyncpg.connect(database_factory(migrated=False))
    try:
        assert await c.fetchval("SELECT to_regnamespace('pgqueue') IS NULL")
    finally:
        await c.close()


async def test_drop_survives_open_connections(_databases: ScratchDatabases, admin_dsn: str) -> None:
    name, dsn = await _databases.clone()
    leaked = await asyncpg.connect(dsn)  # a test that forgets to close must not block the drop
    try:
        await _databases.drop(name)
        admin = await asyncpg.connect(admin_dsn)
        try:
            assert not await admin.fetchval(
                "SELECT count(*) FROM pg_database WHERE datname = $1", name
            )
        finally:
            await admin.close()
    finally:
        leaked.terminate()


async def test_wait_for_polls_until_true_and_times_out() -> None:
    calls = 0

    async def third_time() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    await wait_for(third_time, timeout=5, interval=0.001)
    assert calls == 3

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="never happened"):
        await wait_for(never, timeout=0.05, message="never happened")


def test_run_cli_runs_the_cli_in_a_child_python() -> None:
    result = run_cli("--help", env={"PGQUEUE_HARNESS_PROBE": "1"})
    assert result.args[:2] == [sys.executable, "-c"]
    assert isinstance(result.stdout, str)
    assert result.stdout or result.stderr
