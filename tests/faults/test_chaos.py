"""Scenario 11: chaos. Workers are killed with SIGKILL and restarted while they run events.

At the end every (event, handler) is done (or dead), none is missing, every effect happened
exactly once, and the number of duplicate executions (at-least-once at work) is printed.
The default size runs in CI; ``-m soak`` runs the full size of issue 3.
"""

from __future__ import annotations

import random
import signal

import asyncpg
import pytest

import pgqueue
from tests.faults.conftest import WorkerProcess, Workers
from tests.helpers import wait_for

HANDLERS = ("h1", "h2", "h3")  # fault.multi: 20 attempts, so a few lost claims never kill it


async def _count(conn: asyncpg.Connection, sql: str) -> int:
    return int(await conn.fetchval(sql))


async def run_chaos(
    conn: asyncpg.Connection, dsn: str, workers: Workers, *, events: int, kills: int, seed: int
) -> None:
    rng = random.Random(seed)
    options = {"concurrency": 20, "batch_size": 50}
    running: list[WorkerProcess] = [workers.start(dsn, **options) for _ in range(3)]
    for worker in running:
        await worker.wait_started()
    batch = []
    for _ in range(events):
        payload: dict[str, object] = {"sleep": round(rng.uniform(0, 0.02), 3)}
        if rng.random() < 0.05:  # some handlers fail once and are retried
            payload.update(fail="always", faulty_runs=1)
        batch.append(pgqueue.Event(event_type="fault.multi", payload=payload))
    ids = await pgqueue.enqueue_many(conn, batch)

    for kill in range(kills):
        milestone = (kill + 1) * events // (kills + 2)

        async def progressed(target: int = milestone) -> bool:
            done = "SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'"
            return await _count(conn, done) >= target

        await wait_for(progressed, timeout=120, interval=0.05, message="no progress")
        victim = rng.randrange(len(running))
        running[victim].signal(signal.SIGKILL)
        assert await running[victim].wait_exit() == -signal.SIGKILL
        running[victim] = workers.start(dsn, **options)

    async def settled() -> bool:
        left = "SELECT count(*) FROM pgqueue.outbox WHERE state IN ('pending', 'running')"
        return await _count(conn, left) == 0

    await wait_for(settled, timeout=60 + events / 10, interval=0.2, message="events unsettled")

    # Every (event, handler): done or dead, none missing.
    states = await conn.fetch(
        """
        SELECT o.id, h.name,
               CASE WHEN o.state = 'done' THEN 'done' ELSE o.handlers -> h.name ->> 'state' END
                 AS state
        FROM pgqueue.outbox AS o, unnest($1::text[]) AS h(name)
        """,
        list(HANDLERS),
    )
    assert len(states) == 3 * events == 3 * len(ids)
    unsettled = [tuple(r) for r in states if r["state"] not in ("done", "dead")]
    assert unsettled == []
    dead = [tuple(r) for r in states if r["state"] == "dead"]
    assert dead == []  # at most `kills` lost claims each: far below 20 attempts

    # Executions at least once, effects exactly once (fault_effects' primary key), and the
    # pgqueue.once ledger agrees with the effects row for row.
    never_ran = await _count(
        conn,
        """SELECT count(*) FROM pgqueue.outbox AS o, unnest('{h1,h2,h3}'::text[]) AS h(name)
           WHERE NOT EXISTS (SELECT 1 FROM fault_log AS l
                             WHERE l.event_id = o.id AND l.handler = h.name)""",
    )
    assert never_ran == 0
    assert await _count(conn, "SELECT count(*) FROM fault_effects") == 3 * events
    mismatched = await _count(
        conn,
        """SELECT count(*) FROM fault_effects AS f
           FULL JOIN pgqueue.effects AS e USING (event_id, handler)
           WHERE f.event_id IS NULL OR e.event_id IS NULL""",
    )
    assert mismatched == 0
    executions = await _count(conn, "SELECT count(*) FROM fault_log")
    failed_once = await _count(
        conn, "SELECT count(*) * 3 FROM pgqueue.outbox WHERE payload ? 'fail'"
    )
    duplicates = executions - 3 * events - failed_once
    print(
        f"\nchaos: {events} events x 3 handlers, {kills} kill -9: {executions} executions = "
        f"{3 * events} + {failed_once} retries of planned failures + {duplicates} duplicate "
        "executions after kills"
    )
    assert all(worker.alive for worker in running)
    # A transaction left open (leaked) sits idle in it for good; the rescuer's own two-statement
    # transaction is idle in it for microseconds between them, which a sample may catch.
    idle_in_tx = await _count(
        conn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%' AND state_change < now() - interval '1 second'",
    )
    assert idle_in_tx == 0


async def test_chaos_kill9_and_restart_workers(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    await run_chaos(fconn, db_dsn, workers, events=500, kills=3, seed=3)


@pytest.mark.soak
async def test_chaos_soak(fconn: asyncpg.Connection, db_dsn: str, workers: Workers) -> None:
    await run_chaos(fconn, db_dsn, workers, events=5000, kills=10, seed=11)
