"""Scheduling: delayed events, named queues, priorities and periodic (cron) events, from SQL,
Python and the CLI, through real workers (in process and as CLI processes)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pgqueue
import pgqueue.errors
from pgqueue._migrate import latest_version, roles_sql
from pgqueue._queries import database_now, queries_for
from tests.helpers import run_cli, wait_for
from tests.integration.core_support import run_burst

ROOT = Path(__file__).resolve().parents[2]
CLI = "from pgqueue._cli.main import main; main()"
HANDLERS = "tests.integration.schedule_handlers:registry"


def _recording(registry: pgqueue.Registry, *event_types: str) -> None:
    """Register a handler per type that appends its event id to the test's ``runs`` table."""

    async def record(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        async with ctx.pool.acquire() as conn:
            await conn.execute("INSERT INTO runs (event_id) VALUES ($1)", ctx.event_id)

    for event_type in event_types:
        registry.add(event_type, record, name="record")


async def _run_order(conn: asyncpg.Connection) -> list[int]:
    return [r[0] for r in await conn.fetch("SELECT event_id FROM runs ORDER BY seq")]


# -- priorities -------------------------------------------------------------------------------


async def test_priority_orders_the_claims_from_sql_python_and_cli(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Ready events run by priority (higher first), then run_at, then id; a high-priority
    event that is not due yet holds back nobody. One runner, batches of one: the run order is
    the claim order."""
    await conn.execute("CREATE TABLE runs (seq bigserial, event_id bigint)")
    low = await pgqueue.enqueue(conn, "t", {}, priority=-5)
    plain = await pgqueue.enqueue(conn, "t", {})
    sql_fn = await conn.fetchval("SELECT pgqueue.enqueue('t', '{}', priority => 5)")
    sql_insert = await conn.fetchval(
        "INSERT INTO pgqueue.outbox (event_type, priority) VALUES ('t', 3) RETURNING id"
    )
    many = await pgqueue.enqueue_many(
        conn,
        [
            pgqueue.Event(event_type="t", payload={}, priority=1),
            pgqueue.Event(event_type="t", payload={}, priority=7),
            pgqueue.Event(event_type="t", payload={}),
        ],
    )
    cli = run_cli("enqueue", "t", "{}", "--priority", "4", "--dsn", db_dsn)
    assert cli.returncode == 0, cli.stderr
    from_cli = int(cli.stdout)
    future = await pgqueue.enqueue(
        conn, "t", {}, priority=10, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    # Same priority: the earlier run_at first, whatever the id.
    earlier = await pgqueue.enqueue(
        conn, "t", {}, priority=-5, run_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )

    registry = pgqueue.Registry()
    _recording(registry, "t")
    await run_burst(db_dsn, registry, concurrency=1, batch_size=1)

    assert await _run_order(conn) == [
        many[1], sql_fn, from_cli, sql_insert, many[0], plain, many[2], earlier, low
    ]  # fmt: skip
    state = await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", future)
    assert state == "pending"


async def test_priority_out_of_range_is_refused_everywhere(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    with pytest.raises(pgqueue.PayloadError, match=r"-10\.\.10"):
        await pgqueue.enqueue(conn, "t", {}, priority=11)
    with pytest.raises(ValueError, match="priority"):
        pgqueue.Event(event_type="t", payload={}, priority=-11)
    with pytest.raises(asyncpg.CheckViolationError, match="outbox_priority_range"):
        await conn.fetchval("SELECT pgqueue.enqueue('t', '{}', priority => 11)")
    with pytest.raises(asyncpg.CheckViolationError, match="outbox_priority_range"):
        await conn.execute("INSERT INTO pgqueue.outbox (event_type, priority) VALUES ('t', -11)")
    result = run_cli("enqueue", "t", "{}", "--priority", "11", "--dsn", db_dsn)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "--priority" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


# -- delays and queues ------------------------------------------------------------------------


async def test_delays_and_queues_from_sql_python_and_cli(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Delayed events wait (whoever wrote them); a queue's events go to its workers only."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    delayed = [
        await conn.fetchval(
            "SELECT pgqueue.enqueue('t', '{}', run_at => now() + interval '1 hour')"
        ),
        await pgqueue.enqueue(conn, "t", {}, run_at=later),
        *await pgqueue.enqueue_many(
            conn, [pgqueue.Event(event_type="t", payload={}, run_at=later)]
        ),
    ]
    for args in (("--delay", "1h"), ("--run-at", later.isoformat())):
        result = run_cli("enqueue", "t", "{}", *args, "--dsn", db_dsn)
        assert result.returncode == 0, result.stderr
        delayed.append(int(result.stdout))
    mail = [
        await conn.fetchval("SELECT pgqueue.enqueue('t', '{}', queue => 'mail')"),
        await pgqueue.enqueue(conn, "t", {}, queue="mail"),
        *await pgqueue.enqueue_many(
            conn, [pgqueue.Event(event_type="t", payload={}, queue="mail")]
        ),
        int(run_cli("enqueue", "t", "{}", "--queue", "mail", "--dsn", db_dsn).stdout),
    ]
    ready = await pgqueue.enqueue(conn, "t", {})
    await conn.execute("CREATE TABLE runs (seq bigserial, event_id bigint)")
    registry = pgqueue.Registry()
    _recording(registry, "t")

    await run_burst(db_dsn, registry)
    assert await _run_order(conn) == [ready]
    await run_burst(db_dsn, registry, queues=("mail",))
    assert sorted(await _run_order(conn)) == sorted([ready, *mail])
    waits = await conn.fetch(
        "SELECT state, run_at > now() + interval '50 minutes' AS later FROM pgqueue.outbox"
        " WHERE id = ANY($1::bigint[])",
        delayed,
    )
    assert [tuple(w) for w in waits] == [("pending", True)] * 5


# -- periodic events --------------------------------------------------------------------------


async def test_bad_schedules_fail_at_registration_with_one_line() -> None:
    registry = pgqueue.Registry()
    with pytest.raises(
        pgqueue.errors.RegistryError, match="invalid cron expression '61 \\* \\* \\* \\*'"
    ):
        registry.schedule("61 * * * *", "report.daily")
    with pytest.raises(pgqueue.errors.RegistryError, match="unknown time zone 'Mars/Base'"):
        registry.schedule("0 * * * *", "report.daily", timezone="Mars/Base")
    with pytest.raises(pgqueue.errors.RegistryError, match="reserved for the tick"):
        registry.schedule("0 * * * *", "report.daily", payload={"tick": 1})
    registry.schedule("0 * * * *", "report.daily")
    with pytest.raises(pgqueue.errors.RegistryError, match="registered twice"):
        registry.schedule("5 * * * *", "report.daily")
    assert [s.name for s in registry.schedules] == ["report.daily"]


async def test_bad_cron_expression_stops_the_worker_with_one_line(db_dsn: str) -> None:
    result = run_cli(
        "worker",
        "--handlers",
        "tests.integration.schedule_bad_handlers:registry",
        "--dsn",
        db_dsn,
        cwd=ROOT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "invalid cron expression '*/5 * * *'" in lines[0]
    assert "daily-report" in lines[0]


async def test_a_tick_is_emitted_once_even_when_its_event_is_gone(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """The schedule row decides, not only the idempotency key: a tick whose event was already
    deleted (pruned) is not emitted again by a late worker."""
    queries = queries_for("pgqueue").schedule
    await queries.upsert_schedule(conn, "s", "* * * * *", "UTC", "t", "{}", "default", 0)
    tick = (await database_now(conn)).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    first = await queries.emit_tick(conn, "s", tick, "* * * * *", "UTC")
    assert first is not None
    await conn.execute("DELETE FROM pgqueue.outbox")
    other = await asyncpg.connect(db_dsn)
    try:
        assert await queries.emit_tick(other, "s", tick, "* * * * *", "UTC") is None
        # A worker with another definition of the schedule (older code) emits nothing either.
        later = tick + dt.timedelta(minutes=1)
        assert await queries.emit_tick(other, "s", later, "*/2 * * * *", "UTC") is None
    finally:
        await other.close()
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


def _start_worker(dsn: str, log: Path) -> subprocess.Popen[bytes]:
    """One ``pgqueue worker`` process serving schedule_handlers, its stderr in ``log``."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, "worker", "--handlers", HANDLERS,
             "--poll-interval", "0.2", "--dsn", dsn],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip


@contextlib.asynccontextmanager
async def _worker_processes(dsn: str, count: int, logdir: Path) -> AsyncIterator[list[Any]]:
    """``count`` worker processes (see _start_worker); all killed and reaped at exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(count):
            procs.append(_start_worker(dsn, logdir / f"worker-{n}.log"))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)


async def test_three_workers_emit_each_tick_exactly_once(
    db_dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Three worker processes race for an every-second schedule over several ticks: one event
    per tick, run once, carrying its tick; the schedule row holds the latest."""
    await conn.execute("CREATE TABLE cron_runs (tick timestamptz, pid int, event_id bigint)")
    async with _worker_processes(db_dsn, 3, tmp_path) as procs:

        async def five_ticks_ran() -> bool:
            for n, proc in enumerate(procs):
                log = (tmp_path / f"worker-{n}.log").read_text(errors="replace")
                assert proc.poll() is None, f"worker {n} exited:\n{log}"
            return bool(await conn.fetchval("SELECT count(*) >= 5 FROM cron_runs"))

        await wait_for(five_ticks_ran, timeout=30, message="five ticks did not run")
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(proc.wait, 20) for proc in procs]
        assert codes == [0, 0, 0]
    events = await conn.fetch(
        "SELECT payload ->> 'tick' AS tick, idempotency_key, run_at, state FROM pgqueue.outbox"
        " WHERE event_type = 'periodic.every_second' ORDER BY run_at"
    )
    ticks = [dt.datetime.fromisoformat(e["tick"]) for e in events]
    assert len(ticks) == len(set(ticks)) >= 5
    for event, tick in zip(events, ticks, strict=True):
        assert tick.microsecond == 0 and event["run_at"] == tick
        assert event["idempotency_key"] == f"cron:every_second:{event['tick']}"
    runs = await conn.fetch("SELECT tick, count(*) AS n FROM cron_runs GROUP BY tick")
    done = {e["run_at"] for e in events if e["state"] == "done"}
    assert {r["tick"]: r["n"] for r in runs} == dict.fromkeys(done, 1)
    row = await conn.fetchrow("SELECT last_tick, expression FROM pgqueue.schedules")
    assert (row["last_tick"], row["expression"]) == (ticks[-1], "* * * * * *")


async def _serve(
    dsn: str, registry: pgqueue.Registry, until: Callable[[], Awaitable[bool]], message: str
) -> None:
    """Run a long-lived worker in process until ``until()`` holds, then stop it."""
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(poll_interval=0.2))
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(until, timeout=20, message=message)
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, timeout=15)


async def test_after_downtime_only_the_latest_missed_tick_is_emitted(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """An hourly schedule last emitted five hours ago: the worker emits ONE event, for the
    latest hour, and the schedule row moves to that tick."""
    await conn.execute(
        "INSERT INTO pgqueue.schedules (name, expression, event_type, last_tick)"
        " VALUES ('hourly', '0 * * * *', 'report.hourly', now() - interval '5 hours')"
    )
    registry = pgqueue.Registry()
    registry.schedule("0 * * * *", "report.hourly", payload={"kind": "sales"}, name="hourly")
    registry.add("report.hourly", _noop, name="noop")

    async def caught_up() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT last_tick = date_trunc('hour', now()) FROM pgqueue.schedules"
            )
        )

    await _serve(db_dsn, registry, caught_up, "the schedule never caught up")
    rows = await conn.fetch("SELECT payload, run_at FROM pgqueue.outbox")
    assert len(rows) == 1
    last_tick = await conn.fetchval("SELECT last_tick FROM pgqueue.schedules")
    assert rows[0]["run_at"] == last_tick
    assert json.loads(rows[0]["payload"]) == {"kind": "sales", "tick": last_tick.isoformat()}


async def _noop(payload: dict[str, Any]) -> None:
    return None


async def test_a_changed_expression_restarts_the_schedule_without_catch_up(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The code now says '30 * * * *' where the database has '0 * * * *' last emitted five
    hours ago: no catch-up tick; the schedule restarts from the change. A second schedule
    ticking every second shows the scheduler has made its round."""
    await conn.execute(
        "INSERT INTO pgqueue.schedules (name, expression, event_type, last_tick)"
        " VALUES ('hourly', '0 * * * *', 'report.hourly', now() - interval '5 hours')"
    )
    registry = pgqueue.Registry()
    registry.schedule("30 * * * *", "report.hourly", name="hourly")
    registry.schedule("* * * * * *", "pulse")
    registry.add("report.hourly", _noop, name="noop")
    registry.add("pulse", _noop, name="noop")

    async def pulsed() -> bool:
        return bool(
            await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE event_type = 'pulse'")
        )

    await _serve(db_dsn, registry, pulsed, "the every-second schedule never ticked")
    assert await conn.fetchval(
        "SELECT count(*) FROM pgqueue.outbox WHERE event_type = 'report.hourly'"
    ) == 0  # fmt: skip
    row = await conn.fetchrow(
        "SELECT expression, last_tick > now() - interval '1 minute' AS restarted"
        " FROM pgqueue.schedules WHERE name = 'hourly'"
    )
    assert tuple(row) == ("30 * * * *", True)


async def test_schedules_command_lists_and_deletes(db_dsn: str, conn: asyncpg.Connection) -> None:
    helped = run_cli("schedules", "--help")
    assert helped.returncode == 0 and "--delete NAME" in helped.stdout
    assert "PGQUEUE_DSN" in helped.stdout
    empty = run_cli("schedules", "--dsn", db_dsn)
    assert empty.returncode == 0 and "no schedules" in empty.stdout, empty.stderr
    await conn.execute(
        "INSERT INTO pgqueue.schedules (name, expression, timezone, event_type, last_tick)"
        " VALUES ('nightly', '0 3 * * *', 'Europe/Paris', 'report.nightly',"
        "         '2026-01-01 02:00+00'),"
        "        ('fresh', '*/5 * * * *', 'UTC', 'report.fresh', now())"
    )
    listed = run_cli("schedules", "--dsn", db_dsn)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "name", "expression", "zone", "event", "type", "last", "tick", "next", "tick",
        "registered", "state",
    ]  # fmt: skip
    nightly = next(line for line in lines if line.startswith("nightly"))
    assert "0 3 * * *  Europe/Paris  report.nightly  2026-01-01 02:00:00" in nightly
    assert nightly.endswith("late: no worker serves it?")
    assert next(line for line in lines if line.startswith("fresh")).endswith("ok")

    gone = run_cli("schedules", "--delete", "nightly", "--dsn", db_dsn)
    assert gone.returncode == 0 and "schedule nightly deleted" in gone.stdout, gone.stderr
    assert await conn.fetchval("SELECT array_agg(name) FROM pgqueue.schedules") == ["fresh"]
    missing = run_cli("schedules", "--delete", "nightly", "--dsn", db_dsn)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no schedule named")


async def test_upgrade_from_0001_keeps_the_roles_privileges(
    database_factory: Callable[..., str],
) -> None:
    """A database at version 1 with the roles of the time: after migrating, the producer may
    call the new enqueue() (priority included), the worker may keep schedules, ops may read."""
    conn = await asyncpg.connect(database_factory(migrated=False))
    try:
        await conn.execute("CREATE SCHEMA pgqueue; SET search_path TO pgqueue")
        await conn.execute((ROOT / "sql" / "0001_outbox.sql").read_text())
        await conn.execute(
            """
            DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_producer') THEN
                    CREATE ROLE pgqueue_producer NOLOGIN; END IF;
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_worker') THEN
                    CREATE ROLE pgqueue_worker NOLOGIN; END IF;
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_ops') THEN
                    CREATE ROLE pgqueue_ops NOLOGIN; END IF;
            END $$;
            RESET search_path;
            GRANT USAGE ON SCHEMA pgqueue TO pgqueue_producer, pgqueue_worker, pgqueue_ops;
            GRANT EXECUTE ON FUNCTION pgqueue.enqueue(text, jsonb, timestamptz, text, text)
                TO pgqueue_producer;
            GRANT INSERT (event_type, payload, run_at, idempotency_key, queue)
                ON pgqueue.outbox TO pgqueue_producer;
            GRANT SELECT, UPDATE ON pgqueue.outbox TO pgqueue_worker;
            GRANT SELECT ON ALL TABLES IN SCHEMA pgqueue TO pgqueue_ops;
            """
        )
        assert await pgqueue.migrate(conn) == list(range(2, latest_version() + 1))
        await conn.execute("SET ROLE pgqueue_producer")
        await conn.fetchval("SELECT pgqueue.enqueue('a.b', '{}', priority => 2)")
        await conn.execute("INSERT INTO pgqueue.outbox (event_type, priority) VALUES ('a.b', 1)")
        await conn.execute("SET ROLE pgqueue_worker")
        queries = queries_for("pgqueue").schedule
        await queries.upsert_schedule(conn, "s", "* * * * *", "UTC", "t", "{}", "default", 0)
        await conn.execute("SET ROLE pgqueue_ops")
        assert await conn.fetchval("SELECT count(*) FROM pgqueue.schedules") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM pgqueue.schedules")
    finally:
        await conn.execute("RESET ROLE")
        await conn.close()


async def test_worker_role_keeps_schedules_and_a_role_without_the_grant_stops_at_start(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """With sql/roles.sql, a worker logged in as a pgqueue_worker member emits ticks; without
    the grant on schedules it stops at start with one clear ConfigurationError."""
    await conn.execute(roles_sql("pgqueue"))
    await conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_test_worker')"
        " THEN CREATE ROLE pgqueue_test_worker LOGIN; END IF; END $$"
    )
    await conn.execute("GRANT pgqueue_worker TO pgqueue_test_worker")
    worker_dsn = "postgresql://pgqueue_test_worker@" + db_dsn.split("://", 1)[1].split("@")[-1]
    registry = pgqueue.Registry()
    registry.schedule("* * * * * *", "pulse")
    registry.add("pulse", _noop, name="noop")

    async def pulsed() -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM pgqueue.outbox"))

    await _serve(worker_dsn, registry, pulsed, "no tick from the worker role")
    await conn.execute("REVOKE ALL ON pgqueue.schedules FROM pgqueue_worker")
    worker = pgqueue.Worker(worker_dsn, registry)
    with pytest.raises(pgqueue.errors.ConfigurationError, match="may not keep the schedules"):
        await asyncio.wait_for(worker.run(), timeout=20)
