"""Per-handler concurrency limits across real worker processes (``pgqueue worker`` via the CLI).

The handlers (tests/integration/limit_handlers.py) write one ``limit_runs`` row per run with
its start and end on the database clock; the tests compute from those intervals how many runs
of a handler overlapped. ``"gate": true`` payloads keep a limited handler running until the
test opens ``limit_gate``: the limit stays saturated as long as the test needs, without sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pgqueue
from tests.faults.conftest import WorkerProcess, Workers
from tests.helpers import run_cli, wait_for
from tests.integration.limit_handlers import create_tables, registry

HANDLERS = "tests.integration.limit_handlers:registry"
RUNNING = "SELECT count(*) FROM limit_runs WHERE handler = $1 AND ended_at IS NULL"
RUNS = "SELECT count(*) FROM limit_runs WHERE handler = $1"
FREE_SLOTS = "SELECT count(*) FROM pgqueue.handler_slots WHERE handler = $1 AND lease_token IS NULL"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """``pgqueue worker`` processes on the limit handlers; all SIGKILLed and reaped after."""
    with Workers.killed_after(tmp_path, HANDLERS) as started:
        yield started


@pytest.fixture
async def lconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    """``conn`` with the handlers' tables."""
    await create_tables(conn)
    return conn


def max_overlap(intervals: Sequence[tuple[dt.datetime, dt.datetime]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at a tie)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_max_overlap_counts_what_is_open_at_once() -> None:
    t = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=s) for s in range(6)]
    assert max_overlap([(t[0], t[2]), (t[1], t[3]), (t[2], t[4])]) == 2
    assert max_overlap([(t[0], t[5]), (t[1], t[2]), (t[1], t[3])]) == 3
    assert max_overlap([]) == 0


async def intervals(
    conn: asyncpg.Connection, handler: str, open_until: dt.datetime | None = None
) -> list[tuple[dt.datetime, dt.datetime]]:
    """Runs of ``handler``; a run that never ended (its worker was killed) ends at
    ``open_until``."""
    rows = await conn.fetch(
        "SELECT started_at, COALESCE(ended_at, $2) AS ended_at FROM limit_runs WHERE handler = $1",
        handler,
        open_until,
    )
    assert all(r["ended_at"] is not None for r in rows), "a run never ended"
    return [(r["started_at"], r["ended_at"]) for r in rows]


async def value(conn: asyncpg.Connection, sql: str, *args: Any) -> Any:
    return await conn.fetchval(sql, *args)


def equals(conn: asyncpg.Connection, expected: Any, sql: str, *args: Any) -> Any:
    """A wait_for predicate: the query's value is ``expected``."""

    async def check() -> bool:
        return bool(await conn.fetchval(sql, *args) == expected)

    return check


async def enqueue(conn: asyncpg.Connection, event_type: str, payloads: list[Any]) -> list[int]:
    events = [pgqueue.Event(event_type=event_type, payload=p) for p in payloads]
    return await pgqueue.enqueue_many(conn, events)


def in_state(conn: asyncpg.Connection, ids: list[int], state: str) -> Any:
    return equals(
        conn,
        len(ids),
        "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1) AND state = $2",
        ids,
        state,
    )


async def start(workers: Workers, dsn: str, n: int) -> list[WorkerProcess]:
    return await workers.start_ready(dsn, n)


async def test_limit_holds_across_three_workers_and_siblings_still_run(
    lconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = lconn
    ids = await enqueue(conn, "limits.job", [{"gate": True, "sleep": 0.05}] * 12)
    await start(workers, db_dsn, 3)

    # Saturated (gate closed): the unlimited sibling ran for every event meanwhile ...
    await wait_for(equals(conn, 12, RUNS, "audit"), timeout=30, message="audit held up by crm")
    # ... and the other crm runs were deferred several times each, using no attempt.
    deferred = (
        "SELECT count(*) FROM pgqueue.outbox WHERE (handlers -> 'crm' ->> 'deferred')::int >= 3"
    )
    await wait_for(equals(conn, 10, deferred), timeout=30, message="crm was not deferred")
    assert await value(conn, RUNNING, "crm") == 2
    assert await value(conn, "SELECT max(attempt) FROM pgqueue.outbox") <= 2

    await conn.execute("UPDATE limit_gate SET open = true")
    await wait_for(in_state(conn, ids, "done"), timeout=60, message="not every event is done")

    assert max_overlap(await intervals(conn, "crm")) == 2
    # Each handler ran exactly once per event, at its first attempt.
    rows = await conn.fetch("SELECT handler, count(*) AS n FROM limit_runs GROUP BY handler")
    assert {r["handler"]: r["n"] for r in rows} == {"crm": 12, "audit": 12}
    assert await value(conn, "SELECT count(*) FROM limit_runs WHERE attempt <> 1") == 0
    # A deferred event used two claims with work (audit, then crm), however often deferred.
    assert await value(conn, "SELECT max(attempt) FROM pgqueue.outbox") == 2
    # Every slot was given back.
    await wait_for(equals(conn, 2, FREE_SLOTS, "crm"), message="a slot stayed held")


async def test_slots_of_a_killed_worker_free_up_when_their_lease_expires(
    lconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = lconn
    ids = await enqueue(conn, "limits.job", [{"gate": True}] * 6)
    (first,) = await start(workers, db_dsn, 1)
    await wait_for(equals(conn, 2, RUNNING, "crm"), timeout=30, message="crm did not start")
    held_by_first = "SELECT count(*) FROM pgqueue.handler_slots WHERE leased_by LIKE $1"
    assert await value(conn, held_by_first, f"%:{first.pid}:%") == 2

    first.signal(signal.SIGKILL)
    await first.wait_exit()
    killed_at: dt.datetime = await value(conn, "SELECT clock_timestamp()")
    others = await start(workers, db_dsn, 2)
    # The gate is still closed: two new crm runs can only start on the dead worker's slots.
    running_elsewhere = (
        "SELECT count(*) FROM limit_runs WHERE handler = 'crm' AND ended_at IS NULL"
        " AND pid = ANY($1::int[])"
    )
    await wait_for(
        equals(conn, 2, running_elsewhere, [p.pid for p in others]),
        timeout=30,
        message="the killed worker's slots were never recovered",
    )
    assert await value(conn, held_by_first, f"%:{first.pid}:%") == 0

    await conn.execute("UPDATE limit_gate SET open = true")
    await wait_for(in_state(conn, ids, "done"), timeout=60, message="not every event is done")
    assert max_overlap(await intervals(conn, "crm", open_until=killed_at)) == 2
    await wait_for(equals(conn, 2, FREE_SLOTS, "crm"), message="a slot stayed held")


async def test_deferral_uses_no_attempt_and_retries_keep_their_budget(
    lconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    """solo (limit 1, 3 attempts) waits behind a run holding the only slot, then fails: each
    event still gets exactly its 3 attempts, however often it was deferred."""
    conn = lconn
    (blocker,) = await enqueue(conn, "limits.flaky", [{"gate": True}])
    await start(workers, db_dsn, 2)
    await wait_for(equals(conn, 1, RUNNING, "solo"), timeout=30, message="blocker not running")
    failing = await enqueue(conn, "limits.flaky", [{"fail": True}] * 3)

    deferred_often = (
        "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1)"
        " AND (handlers -> 'solo' ->> 'deferred')::int >= 3"
    )
    await wait_for(
        equals(conn, 3, deferred_often, failing), timeout=30, message="solo was not deferred"
    )
    assert await value(conn, RUNS, "solo") == 1  # only the blocker ran
    # Nothing ran at those claims, so each gave its attempt back.
    used = (
        "SELECT count(*) FROM pgqueue.outbox"
        " WHERE id = ANY($1) AND state = 'pending' AND attempt <> 0"
    )
    assert await value(conn, used, failing) == 0

    await conn.execute("UPDATE limit_gate SET open = true")
    await wait_for(in_state(conn, failing, "dead"), timeout=60, message="not dead")
    await wait_for(in_state(conn, [blocker], "done"), message="blocker not done")
    rows = await conn.fetch(
        "SELECT o.id, o.attempt, (o.handlers -> 'solo' ->> 'attempts')::int AS attempts,"
        " (SELECT count(*) FROM limit_runs AS r WHERE r.event_id = o.id) AS runs"
        " FROM pgqueue.outbox AS o WHERE o.id = ANY($1)",
        failing,
    )
    assert [(r["attempt"], r["attempts"], r["runs"]) for r in rows] == [(3, 3, 3)] * 3
    assert max_overlap(await intervals(conn, "solo")) == 1


async def test_operator_override_wins_over_the_registry(
    lconn: asyncpg.Connection, db_dsn: str
) -> None:
    conn = lconn
    # Set before any worker ran (the row is created by the override) and after.
    await conn.execute("INSERT INTO pgqueue.handler_limits (handler, override) VALUES ('crm', 1)")
    await conn.execute("UPDATE limit_gate SET open = true")
    ids = await enqueue(conn, "limits.job", [{"sleep": 0.05}] * 4)
    worker = pgqueue.Worker(db_dsn, registry, pgqueue.WorkerSettings(poll_interval=0.1))
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(in_state(conn, ids, "done"), timeout=30, message="not every event is done")
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, timeout=15)
    row = await conn.fetchrow(
        "SELECT concurrency, override FROM pgqueue.handler_limits WHERE handler = 'crm'"
    )
    assert (row["concurrency"], row["override"]) == (2, 1)
    assert (
        await value(conn, "SELECT count(*) FROM pgqueue.handler_slots WHERE handler = 'crm'") == 1
    )
    assert max_overlap(await intervals(conn, "crm")) == 1

    # Raising the override adds slots at once; clearing it falls back to the registry's 2.
    await conn.execute("UPDATE pgqueue.handler_limits SET override = 5 WHERE handler = 'crm'")
    assert (
        await value(conn, "SELECT max(slot) FROM pgqueue.handler_slots WHERE handler = 'crm'") == 5
    )
    await conn.execute("UPDATE pgqueue.handler_limits SET override = NULL WHERE handler = 'crm'")
    assert (
        await value(conn, "SELECT max(slot) FROM pgqueue.handler_slots WHERE handler = 'crm'") == 2
    )


async def test_limits_command_lists_sets_and_resets_overrides(
    lconn: asyncpg.Connection, db_dsn: str
) -> None:
    conn = lconn
    empty = await asyncio.to_thread(run_cli, "limits", "--dsn", db_dsn)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == (
        "no handler has a concurrency or rate limit (register one with concurrency=N or "
        "rate='100/s')\n"
    )
    # A worker writes its registry's limits when it starts.
    await pgqueue.Worker(db_dsn, registry, pgqueue.WorkerSettings(burst=True)).run()
    await conn.execute(
        "UPDATE pgqueue.handler_slots SET lease_token = gen_random_uuid(), leased_by = 'w',"
        " lease_expires_at = now() + interval '1 hour' WHERE handler = 'crm' AND slot = 1"
    )

    shown = await asyncio.to_thread(run_cli, "limits", "--dsn", db_dsn)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "handler  registry  override  limit  running  rate",
        "crm             2         -      2        1     -",
        "solo            1         -      1        0     -",
    ]

    changed = await asyncio.to_thread(
        run_cli, "limits", "--set", "crm=3", "--set", "solo=4", "--reset", "solo", "--dsn", db_dsn
    )
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines()[1:] == [
        "crm             2         3      3        1     -",
        "solo            1         -      1        0     -",
    ]
    assert await value(conn, "SELECT count(*) FROM pgqueue.handler_slots") == 4

    # All or nothing: an unknown handler changes nothing and says what to do.
    unknown = await asyncio.to_thread(
        run_cli, "limits", "--set", "crm=1", "--set", "nosuch=2", "--dsn", db_dsn
    )
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: handler 'nosuch' has no concurrency limit")
    assert len(unknown.stderr.splitlines()) == 1
    assert (
        await value(conn, "SELECT override FROM pgqueue.handler_limits WHERE handler = 'crm'") == 3
    )

    for bad in ("crm=0", "crm", "crm=x"):
        usage = await asyncio.to_thread(run_cli, "limits", "--set", bad, "--dsn", db_dsn)
        assert usage.returncode == 2, usage.stderr
        assert usage.stderr.startswith("error: ") and "HANDLER=N" in usage.stderr
