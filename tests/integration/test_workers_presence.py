"""Worker presence: a running worker is listed (library and ``pgqueue workers``), a stopped
one is gone at once, and a killed one drops off when its lease expires."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import asyncpg

import pgqueue
import pgqueue.admin
from tests.helpers import run_cli, wait_for
from tests.integration.dashboard_handlers import registry
from tests.integration.dashboard_support import ROOT

_CLI = "from pgqueue._cli.main import main; main()"


async def _pids(conn: asyncpg.Connection) -> list[int]:
    return [w.pid for w in await pgqueue.admin.list_workers(conn)]


async def test_a_running_worker_is_listed_and_a_stopped_one_is_gone(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    settings = pgqueue.WorkerSettings(queues=("default", "reports"), lease_seconds=5)
    worker = pgqueue.Worker(db_dsn, registry, settings)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: _pids_match(conn, [os.getpid()]), message="worker not listed")
        (info,) = await pgqueue.admin.list_workers(conn)
        assert info.worker_id == worker.worker_id
        assert info.queues == ["default", "reports"]
        assert set(info.event_types) == {"order.paid", "report.built"}
        assert info.version and info.host
        assert info.started_at <= info.heartbeat_at < info.expires_at
        assert info.in_flight == 0
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    # Stopped: the row is deleted, not merely expired.
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.workers") == 0


async def _pids_match(conn: asyncpg.Connection, expected: list[int]) -> bool:
    return await _pids(conn) == expected


async def test_a_killed_worker_drops_off_after_its_lease(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLI,
        "worker",
        "--dsn",
        db_dsn,
        "--handlers",
        "tests.integration.dashboard_handlers:registry",
        "--lease",
        "3",
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: _pids_match(conn, [process.pid]), timeout=30, message="worker not listed"
        )
        shown = await asyncio.to_thread(run_cli, "workers", "--dsn", db_dsn, "--json")
        assert shown.returncode == 0, shown.stderr
        (row,) = [json.loads(line) for line in shown.stdout.splitlines()]
        assert row["pid"] == process.pid and row["queues"] == ["default"]
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        # Still listed until its lease (3 s) runs out, then gone; the row stays until swept.
        await wait_for(lambda: _pids_match(conn, []), timeout=15, message="killed worker kept")
        assert await conn.fetchval("SELECT count(*) FROM pgqueue.workers") == 1
        table = await asyncio.to_thread(run_cli, "workers", "--dsn", db_dsn)
        assert table.returncode == 0 and "no worker alive" in table.stdout
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
