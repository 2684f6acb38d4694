"""Scenario 4: the PostgreSQL server restarts under running workers (a private cluster)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

import pgqueue
from tests.faults.conftest import Cluster, Workers
from tests.helpers import wait_for

EVENTS = 300  # x 3 handlers (fault.multi), each sleeping 50 ms


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_server_restart_workers_reconnect_and_lose_nothing(
    cluster: Cluster,
    cluster_conn: asyncpg.Connection,
    workers: Workers,
    mode: str,
    pg_bindir: Path | None,
) -> None:
    if pg_bindir is not None:  # --pg: the restarted server is the version under test
        package = pg_bindir.parents[1].name  # <cache>/18.4.0-beta.17/native/bin
        shown = await cluster_conn.fetchval("SHOW server_version")
        assert shown.split(".")[0] == package.split(".")[0], (shown, package)
    dsn = cluster.dsn
    running = [workers.start(dsn, concurrency=10) for _ in range(2)]
    for worker in running:
        await worker.wait_started()
    events = [pgqueue.Event(event_type="fault.multi", payload={"sleep": 0.05})] * EVENTS
    ids = await pgqueue.enqueue_many(cluster_conn, events)

    async def some_done() -> bool:
        done = await cluster_conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'"
        )
        return bool(done >= EVENTS // 10)

    await wait_for(some_done, timeout=30, message="workers made no progress")
    unfinished = await cluster_conn.fetchval(
        "SELECT count(*) FROM pgqueue.outbox WHERE state <> 'done'"
    )
    assert unfinished > 0  # the restart comes mid-run
    await cluster_conn.close()
    old_postmaster = cluster.postmaster_pid()
    cluster.restart(mode)
    assert cluster.postmaster_pid() != old_postmaster

    conn = await asyncpg.connect(dsn)
    try:

        async def all_settled() -> bool:
            left = await conn.fetchval(
                "SELECT count(*) FROM pgqueue.outbox WHERE state IN ('pending', 'running')"
            )
            return bool(left == 0)

        await wait_for(all_settled, timeout=30, interval=0.2, message="events left unsettled")
        states = await conn.fetch("SELECT state, count(*) FROM pgqueue.outbox GROUP BY state")
        dead = await conn.fetch(
            "SELECT id, attempt, last_error, handlers FROM pgqueue.outbox WHERE state = 'dead'"
            " ORDER BY id LIMIT 5"
        )
        assert {r["state"]: r["count"] for r in states} == {"done": EVENTS}, dead
        pairs = await conn.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT event_id, handler FROM fault_log) AS p"
        )
        assert pairs == 3 * EVENTS  # every (event, handler) ran ...
        effects = await conn.fetchval("SELECT count(*) FROM fault_effects")
        assert effects == 3 * EVENTS  # ... and had its effect exactly once (primary key)
        ledger = await conn.fetchval("SELECT count(*) FROM pgqueue.effects")
        assert ledger == 3 * EVENTS
        assert sorted(ids) == [
            r["id"] for r in await conn.fetch("SELECT id FROM pgqueue.outbox ORDER BY id")
        ]
    finally:
        await conn.close()
    for worker in running:
        assert worker.alive, worker.stderr()[-3000:]  # reconnected instead of exiting
        assert "listener reconnected" in worker.stderr()
