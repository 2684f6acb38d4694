"""pgqueue behind a real PgBouncer in transaction mode (pgbouncer_support.Bouncer).

Workers run as CLI processes (tests/faults: fault_handlers, Workers) with ``--dsn`` through
PgBouncer and ``--pooled``; LISTEN goes to a direct ``--listen-dsn`` or is off
(``--poll-only``). The pool has fewer server connections than the clients, so a transaction
may land on any server session: whatever relied on session state would fail here.

Skipped, with the reason, when pgbouncer is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pgqueue
from pgqueue._migrate import latest_version
from tests.faults.conftest import Workers
from tests.faults.fault_handlers import create_tables
from tests.helpers import run_cli, wait_for
from tests.integration.pgbouncer_support import INSTALL_HINT, Bouncer, find_pgbouncer

KILL = 9
# Longer than any wait below: an event that completes proves a NOTIFY woke the worker.
LONG_POLL = 120


@pytest.fixture(scope="session")
def bouncer(admin_dsn: str) -> Iterator[Bouncer]:
    """A pgbouncer (pool_mode = transaction) in front of the test server for this session."""
    binary = find_pgbouncer()
    if binary is None:
        pytest.skip(f"pgbouncer is not installed: {INSTALL_HINT}")
    # Not pytest's tmp_path: its parents are 0700, and pgbouncer runs as another user.
    workdir = Path(tempfile.mkdtemp(prefix="pgqueue-test-pgbouncer-"))
    running = Bouncer.start(binary, admin_dsn, workdir)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pooled_dsn(bouncer: Bouncer, db_dsn: str) -> str:
    """The test's own migrated database, through PgBouncer."""
    return bouncer.dsn(db_dsn)


@pytest.fixture
async def pconn(pooled_dsn: str, db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A producer's connection through PgBouncer (statement cache off), fault tables made."""
    direct = await asyncpg.connect(db_dsn)
    try:
        await create_tables(direct)
    finally:
        await direct.close()
    conn = await asyncpg.connect(pooled_dsn, statement_cache_size=0)
    try:
        yield conn
    finally:
        await conn.close(timeout=5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes (tests/faults/conftest.py); all are killed and reaped after the test."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


async def state_of(conn: asyncpg.Connection, event_id: int) -> str:
    state: str = await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id)
    return state


async def wait_states(
    conn: asyncpg.Connection, ids: list[int], state: str, timeout: float = 30.0, why: str = ""
) -> None:
    async def reached() -> bool:
        count = await conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1) AND state = $2", ids, state
        )
        return bool(count == len(ids))

    await wait_for(reached, timeout=timeout, message=why or f"events {ids} never all {state}")


async def runs(conn: asyncpg.Connection, event_id: int) -> list[int]:
    """Worker pids that ran the event, in order (fault_log)."""
    rows = await conn.fetch("SELECT pid FROM fault_log WHERE event_id = $1 ORDER BY id", event_id)
    return [r["pid"] for r in rows]


async def enqueue_all(conn: asyncpg.Connection, payloads: list[dict[str, Any]]) -> list[int]:
    async with conn.transaction():
        return [await pgqueue.enqueue(conn, "fault", p) for p in payloads]


# -- workers ---------------------------------------------------------------------------------


async def test_listen_dsn_wakes_a_pooled_worker_without_waiting_for_the_poll(
    pconn: asyncpg.Connection, pooled_dsn: str, db_dsn: str, workers: Workers
) -> None:
    worker = workers.start(
        pooled_dsn, pooled=True, listen_dsn=db_dsn, poll_interval=LONG_POLL, concurrency=5
    )
    await worker.wait_started()
    first = await enqueue_all(pconn, [{} for _ in range(5)])
    await wait_states(pconn, first, "done", why=worker.stderr())
    # The worker is idle now, asleep for LONG_POLL unless a notification wakes it.
    second = await enqueue_all(pconn, [{} for _ in range(20)])
    await wait_states(pconn, second, "done", timeout=LONG_POLL / 4, why=worker.stderr())
    assert await pconn.fetchval("SELECT count(*) FROM fault_effects") == 25
    assert "connection pooler" not in worker.stderr()  # the listen DSN is direct


async def test_poll_only_worker_through_pgbouncer(
    pconn: asyncpg.Connection, pooled_dsn: str, workers: Workers
) -> None:
    worker = workers.start(pooled_dsn, pooled=True, poll_only=True, poll_interval=0.2)
    await worker.wait_started()
    ids = await enqueue_all(pconn, [{} for _ in range(50)])
    await wait_states(pconn, ids, "done", why=worker.stderr())
    assert await pconn.fetchval("SELECT count(*) FROM fault_effects") == 50


async def test_no_listen_is_an_alias_of_poll_only(
    pconn: asyncpg.Connection, pooled_dsn: str, workers: Workers
) -> None:
    worker = workers.start(pooled_dsn, pooled=True, no_listen=True, poll_interval=0.2)
    [event] = await enqueue_all(pconn, [{}])
    await wait_states(pconn, [event], "done", why=worker.stderr())


async def test_retry_and_dead_through_pgbouncer(
    pconn: asyncpg.Connection, pooled_dsn: str, workers: Workers
) -> None:
    worker = workers.start(pooled_dsn, pooled=True, poll_only=True)
    poison, flaky = await enqueue_all(
        pconn, [{"fail": "always"}, {"fail": "always", "faulty_runs": 1}]
    )
    await wait_states(pconn, [poison], "dead", why=worker.stderr())
    await wait_states(pconn, [flaky], "done", why=worker.stderr())
    handlers = await pconn.fetchval("SELECT handlers FROM pgqueue.outbox WHERE id = $1", poison)
    assert "RuntimeError: fault: run 3 of a fails" in handlers
    assert len(await runs(pconn, poison)) == 3
    assert len(await runs(pconn, flaky)) == 2
    assert await pconn.fetchval("SELECT count(*) FROM fault_effects") == 1


async def test_heartbeat_and_rescue_through_pgbouncer_after_kill9(
    pconn: asyncpg.Connection, pooled_dsn: str, workers: Workers
) -> None:
    """Leases are 1 s: a 3 s handler runs once only if heartbeats get through the pooler;
    a killed worker's event is rescued and finished by the other worker."""
    first = workers.start(pooled_dsn, pooled=True, poll_only=True)
    long_one, killed = await enqueue_all(pconn, [{"sleep": 3}, {"sleep": 60, "faulty_runs": 1}])

    async def both_started() -> bool:
        if not first.alive:
            raise AssertionError(first.stderr())
        return bool(await runs(pconn, long_one)) and bool(await runs(pconn, killed))

    await wait_for(both_started, timeout=20, message=first.stderr())
    await wait_states(pconn, [long_one], "done", why=first.stderr())
    assert await runs(pconn, long_one) == [first.pid]  # never rescued while running

    second = workers.start(pooled_dsn, pooled=True, poll_only=True)
    await second.wait_started()
    first.signal(KILL)
    assert await first.wait_exit() == -KILL
    await wait_states(pconn, [killed], "done", why=second.stderr())
    assert await runs(pconn, killed) == [first.pid, second.pid]
    effect_pids = await pconn.fetch("SELECT pid FROM fault_effects WHERE event_id = $1", killed)
    assert [r["pid"] for r in effect_pids] == [second.pid]


async def test_pooled_without_listen_dsn_or_poll_only_is_refused(pooled_dsn: str) -> None:
    result = run_cli(
        "worker",
        "--dsn",
        pooled_dsn,
        "--pooled",
        "--handlers",
        "tests.faults.fault_handlers:registry",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: LISTEN does not work through a transaction-mode")
    assert "--listen-dsn" in result.stderr and "--poll-only" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


async def test_worker_through_pgbouncer_without_pooled_says_to_add_it(pooled_dsn: str) -> None:
    result = run_cli(
        "worker", "--dsn", pooled_dsn, "--handlers", "tests.faults.fault_handlers:registry"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: "), result.stderr
    assert "unsupported startup parameter" in result.stderr
    assert "--pooled" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


async def test_listen_dsn_through_the_pooler_is_warned_about(
    pconn: asyncpg.Connection, pooled_dsn: str, workers: Workers
) -> None:
    worker = workers.start(pooled_dsn, pooled=True, listen_dsn=pooled_dsn, poll_interval=0.2)

    async def warned() -> bool:
        return "goes through a connection pooler" in worker.stderr()

    await wait_for(warned, timeout=20, message=worker.stderr())
    assert "give --listen-dsn a direct connection" in worker.stderr()
    [event] = await enqueue_all(pconn, [{}])  # polling still finds the work
    await wait_states(pconn, [event], "done", why=worker.stderr())


# -- producer --------------------------------------------------------------------------------


async def test_producers_enqueue_through_pgbouncer(
    pooled_dsn: str, db_dsn: str, bouncer: Bouncer
) -> None:
    """Many producers at once, each with its own transaction, through fewer server sessions."""
    conns = [await asyncpg.connect(pooled_dsn, statement_cache_size=0) for _ in range(12)]
    try:

        async def produce(conn: asyncpg.Connection, n: int) -> None:
            for i in range(10):
                async with conn.transaction():
                    await pgqueue.enqueue(conn, "fault", {"n": n, "i": i})
                    await pgqueue.enqueue_many(
                        conn,
                        [
                            pgqueue.Event(event_type="fault", payload={"n": n}),
                            pgqueue.Event(event_type="fault", payload={"i": i}, queue="other"),
                        ],
                    )
            tx = conn.transaction()
            await tx.start()
            await pgqueue.enqueue(conn, "fault", {"rolled": "back"})
            await tx.rollback()

        await asyncio.gather(*(produce(c, n) for n, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close(timeout=5)
    result = run_cli("enqueue", "fault", '{"from": "cli"}', "--dsn", pooled_dsn)
    assert result.returncode == 0, result.stderr
    direct = await asyncpg.connect(db_dsn)
    try:
        assert await direct.fetchval("SELECT count(*) FROM pgqueue.outbox") == 12 * 30 + 1
        assert (
            await direct.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE payload ? 'rolled'")
            == 0
        )
    finally:
        await direct.close()


# -- migrations ------------------------------------------------------------------------------


async def test_migrate_and_admin_commands_through_pgbouncer(
    bouncer: Bouncer, database_factory: Callable[..., str]
) -> None:
    pooled = bouncer.dsn(database_factory(migrated=False))
    first = run_cli("migrate", "--dsn", pooled)
    assert first.returncode == 0, first.stderr
    assert f"now at version {latest_version()}" in first.stdout
    again = run_cli("migrate", "--dsn", pooled)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout
    for command in (
        ["enqueue", "fault", "{}"],
        ["status"],
        ["prune", "--older-than", "1d", "--yes"],
    ):
        result = run_cli(*command, "--dsn", pooled)
        assert result.returncode == 0, (command, result.stderr)
    status = run_cli("status", "--dsn", pooled)
    assert status.stdout.split("\n")[1].split()[:2] == ["fault", "1"]


async def test_concurrent_migrations_through_pgbouncer_apply_once_and_leave_no_lock(
    bouncer: Bouncer, database_factory: Callable[..., str]
) -> None:
    """A session advisory lock through a transaction pooler is taken and released in whatever
    server sessions the statements land in: two migrators could both 'hold' it, and a lock
    could stay behind. The migrator takes a transaction-level lock instead."""
    direct_dsn = database_factory(migrated=False)
    pooled = bouncer.dsn(direct_dsn)
    conns = [await asyncpg.connect(pooled, statement_cache_size=0) for _ in range(4)]
    try:
        results = await asyncio.gather(*(pgqueue.migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close(timeout=5)
    # Each migration runs in its own transaction, so concurrent migrators may share the work
    # ([1..6] and [7..9] is fine); each version is applied exactly once.
    assert sorted(v for applied in results for v in applied) == list(range(1, latest_version() + 1))
    direct = await asyncpg.connect(direct_dsn)
    try:
        assert await direct.fetchval("SELECT max(version) FROM pgqueue.migrations") == (
            latest_version()
        )
        locks = await direct.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert locks == 0
    finally:
        await direct.close()
    # No server session kept the migration's search_path.
    probes = [await asyncpg.connect(pooled, statement_cache_size=0) for _ in range(6)]
    try:
        paths = await asyncio.gather(*(p.fetchval("SHOW search_path") for p in probes))
    finally:
        for p in probes:
            await p.close(timeout=5)
    assert set(paths) == {'"$user", public'}
