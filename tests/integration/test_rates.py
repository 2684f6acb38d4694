"""Rate limits across real worker processes (``pgqueue worker`` via the CLI).

The handlers (tests/integration/rate_handlers.py) record each run's start on the database
clock. The minute-long accuracy test is marked ``soak`` (run it with ``-m soak``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

import pgqueue
import pgqueue.admin
from pgqueue._errors import RegistryError
from pgqueue._queries import queries_for
from pgqueue._registry import Registry
from tests.faults.conftest import WorkerProcess, Workers
from tests.helpers import count_is, run_cli, wait_for
from tests.integration.rate_handlers import create_tables

HANDLERS = "tests.integration.rate_handlers:registry"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """``pgqueue worker`` processes on the rate handlers; all SIGKILLed and reaped after."""
    with Workers.killed_after(tmp_path, HANDLERS) as started:
        yield started


@pytest.fixture
async def rconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    """``conn`` with the handlers' table."""
    await create_tables(conn)
    return conn


async def start(workers: Workers, dsn: str, n: int) -> list[WorkerProcess]:
    return await workers.start_ready(dsn, n, lease=3)


def test_registry_checks_rates() -> None:
    registry = Registry()
    for bad in ("100", "0/s", "10/d", "1e3/s", 5):
        with pytest.raises(RegistryError, match="rate must be N/s, N/m or N/h"):
            registry.add("t", lambda p: None, name="h", rate=bad)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="rate_per_key=True needs a rate"):
        registry.add("t", lambda p: None, name="h", rate_per_key=True)
    registry.add("t", lambda p: None, name="h", rate="5/m")
    with pytest.raises(RegistryError, match="a rate is shared"):
        registry.add("u", lambda p: None, name="h", rate="6/m")
    assert registry.rates == {"h": ("5/m", False)}


async def test_per_key_rate_defers_without_attempts_and_limits_overrides_it(
    rconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = rconn
    events = [
        pgqueue.Event(event_type="rates.keyed", payload={}, ordering_key=k)
        for k in ("a", "b", "c")
        for _ in range(3)
    ]
    ids = await pgqueue.enqueue_many(conn, events)
    await start(workers, db_dsn, 2)

    # 1/h per key: each key's bucket starts with one token, so one run per key, then nothing.
    runs = "SELECT count(*) FROM rate_runs"
    await wait_for(count_is(conn, 3, runs), timeout=30, message="one run per key expected")
    deferred = (
        "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1) AND state = 'pending'"
        " AND attempt = 0 AND (handlers -> 'per_key' ->> 'deferred')::int >= 1"
    )
    await wait_for(count_is(conn, 6, deferred, ids), timeout=30, message="not deferred")
    assert await conn.fetchval("SELECT count(DISTINCT key) FROM rate_runs") == 3

    shown = run_cli("limits", "--dsn", db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert "1/h per key" in shown.stdout
    bad = run_cli("limits", "--rate", "per_key=fast", "--dsn", db_dsn)
    assert bad.returncode == 2 and "is not HANDLER=RATE" in bad.stderr

    changed = run_cli("limits", "--rate", "per_key=1000/s", "--dsn", db_dsn)
    assert changed.returncode == 0, changed.stderr
    assert "1000/s per key (override)" in changed.stdout
    done = "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1) AND state = 'done'"
    await wait_for(count_is(conn, 9, done, ids), timeout=60, message="override not applied")
    # Waiting for a token spent no attempt: every run was its event's first.
    assert await conn.fetchval("SELECT max(attempt) FROM rate_runs") == 1

    reset = run_cli("limits", "--reset-rate", "per_key", "--dsn", db_dsn)
    assert reset.returncode == 0 and "1/h per key" in reset.stdout
    assert "(override)" not in reset.stdout


@pytest.mark.soak
async def test_rate_holds_within_ten_percent_over_a_minute_across_three_workers(
    rconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    """20/s for 60 s: 1,200 runs (one second's burst of 20 more at most), within 10%."""
    conn = rconn
    await pgqueue.enqueue_many(
        conn, [pgqueue.Event(event_type="rates.tick", payload={}) for _ in range(2000)]
    )
    await start(workers, db_dsn, 3)
    first_run = "SELECT min(started_at) FROM rate_runs"
    await wait_for(lambda: _not_null(conn, first_run), timeout=30, message="nothing ran")
    first: dt.datetime = await conn.fetchval(first_run)
    until = first + dt.timedelta(seconds=60)
    past = "SELECT clock_timestamp() > $1"
    await wait_for(count_is(conn, True, past, until), timeout=90, message="clock stuck")
    runs = await conn.fetchval("SELECT count(*) FROM rate_runs WHERE started_at < $1", until)
    workers_used = await conn.fetchval("SELECT count(DISTINCT pid) FROM rate_runs")
    assert workers_used == 3
    assert 1200 * 0.9 <= runs <= 1200 * 1.1, f"{runs} runs in 60 s at 20/s"


async def _not_null(conn: asyncpg.Connection, sql: str) -> bool:
    return await conn.fetchval(sql) is not None


async def test_prune_deletes_per_key_buckets_that_are_full_again(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await conn.execute(
        "INSERT INTO pgqueue.handler_limits (handler, rate, rate_per_key) VALUES"
        " ('keyed', '10/s', true), ('slow', '1/h', true)"
    )
    await conn.execute(
        "INSERT INTO pgqueue.handler_limits (handler, concurrency) VALUES ('cap', 2)"
    )
    await conn.execute(
        """
        INSERT INTO pgqueue.rate_buckets (handler, key, tokens, updated_at) VALUES
            ('keyed', 'idle', 0, now() - interval '1 minute'),  -- refilled: a fresh one
            ('keyed', 'busy', 0, now()),                           -- just spent
            ('keyed', 'taking', 0, now() - interval '1 minute'),   -- a take holds it
            ('keyed', '', 0, now() - interval '1 minute'),         -- the handler's own
            ('slow', 'spent', 0, now() - interval '1 minute'),     -- refills in an hour
            ('slow', 'full', 1, now() - interval '1 minute'),
            ('cap', 'norate', 0, now())                            -- no rate any more
        """
    )
    taker = await asyncpg.connect(db_dsn)
    try:
        async with taker.transaction():
            # A take's first statement: it locks the bucket until the take commits.
            await taker.execute(queries_for("pgqueue").rates.RATES_ENSURE, ["keyed"], ["taking"])
            assert await pgqueue.admin.prune(conn, dt.timedelta(days=1)) == 0
    finally:
        await taker.close()

    rows = await conn.fetch("SELECT handler, key FROM pgqueue.rate_buckets")
    assert {(r["handler"], r["key"]) for r in rows} == {
        ("keyed", "busy"),
        ("keyed", "taking"),
        ("keyed", ""),
        ("slow", "spent"),
    }
