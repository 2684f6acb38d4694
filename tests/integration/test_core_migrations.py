"""Migrations: idempotent, safe when concurrent, any schema name, psql-equivalent, snapshot."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from tenacity import stop_after_attempt

import pgqueue
import pgqueue.admin
import pgqueue.errors
from pgqueue import _migrate
from pgqueue._embedded import bundled_binaries
from pgqueue._migrate import latest_version, load_migrations
from tests.helpers import wait_for
from tests.integration.core_support import Calls, counting, outbox_row, run_burst

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("schema_snapshot.sql")
MIGRATIONS = sorted((ROOT / "sql").glob("[0-9][0-9][0-9][0-9]_*.sql"))


# Every migration shipped, in order: a fresh schema gets them all.
ALL_VERSIONS = list(range(1, latest_version() + 1))


def _registry(calls: Calls) -> pgqueue.Registry:
    registry = pgqueue.Registry()
    counting(registry, calls, "order.placed", "h")
    return registry


def _all_versions() -> list[int]:
    """Every migration's version, in order (a fresh database gets them all)."""
    return list(range(1, latest_version() + 1))


async def test_migrate_twice_applies_once(database_factory: Callable[..., str]) -> None:
    conn = await asyncpg.connect(database_factory(migrated=False))
    try:
        assert await pgqueue.migrate(conn) == ALL_VERSIONS
        assert await pgqueue.migrate(conn) == []
        rows = await conn.fetch("SELECT version, name FROM pgqueue.migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in load_migrations()
        ]
        assert rows[0]["name"] == "outbox"
        assert await conn.fetchval("SHOW search_path") == '"$user", public'
    finally:
        await conn.close()


async def test_migrate_keeps_the_callers_search_path(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE SCHEMA app; SET search_path TO app, public")
    await pgqueue.migrate(conn, "other_q")
    assert await conn.fetchval("SHOW search_path") == "app, public"


async def test_two_concurrent_migrations_both_succeed_and_apply_each_once(
    database_factory: Callable[..., str],
) -> None:
    dsn = database_factory(migrated=False)
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        results = await asyncio.gather(pgqueue.migrate(a), pgqueue.migrate(b))
        # Each migration is applied once, by one of them (the lock is per migration's
        # transaction, so they may share the work: [1, 2, 3] and [4, 5] is fine).
        assert sorted(results[0] + results[1]) == ALL_VERSIONS
        assert await a.fetchval("SELECT count(*) FROM pgqueue.migrations") == latest_version()
    finally:
        await a.close()
        await b.close()


async def test_custom_schema_works_end_to_end(db_dsn: str, conn: asyncpg.Connection) -> None:
    """migrate(conn, 'other_q'), then enqueue and a worker on that schema only."""
    assert await pgqueue.migrate(conn, "other_q") == ALL_VERSIONS
    python_id = await pgqueue.enqueue(conn, "order.placed", {"n": 1}, schema="other_q")
    sql_id = await conn.fetchval("""SELECT other_q.enqueue('order.placed', '{"n": 2}')""")
    calls = Calls()

    stats = await run_burst(db_dsn, _registry(calls), schema_name="other_q")

    assert stats.done == 2
    assert calls == {(python_id, "h"): 1, (sql_id, "h"): 1}
    assert (await outbox_row(conn, sql_id, schema="other_q"))["state"] == "done"
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0
    report = await pgqueue.admin.status(conn, schema="other_q")
    assert [(r.event_type, r.state, r.events) for r in report.counts] == [
        ("order.placed", "done", 2)
    ]


async def test_custom_schema_notifies_on_its_own_channel(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await pgqueue.migrate(conn, "other_q")
    received: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("other_q.outbox", lambda *args: received.append(args[3]))
        await pgqueue.enqueue(conn, "t", {}, schema="other_q", queue="q1")

        async def notified() -> bool:
            return bool(received)

        await wait_for(notified, message="no NOTIFY on other_q.outbox")
        assert received == ["q1"]
    finally:
        await listener.close()


async def test_migrate_rejects_a_schema_name_with_sql_in_it(conn: asyncpg.Connection) -> None:
    with pytest.raises(pgqueue.errors.ConfigurationError, match="invalid schema name"):
        await pgqueue.migrate(conn, 'x"; DROP SCHEMA pgqueue CASCADE; --')
    assert await conn.fetchval("SELECT to_regclass('pgqueue.outbox') IS NOT NULL")


async def test_worker_refuses_a_database_that_is_not_migrated(
    database_factory: Callable[..., str],
) -> None:
    worker = pgqueue.Worker(database_factory(migrated=False), _registry(Calls()))
    with pytest.raises(pgqueue.errors.SchemaError, match="pgqueue migrate --schema pgqueue"):
        await asyncio.wait_for(worker.run(), timeout=30)


async def test_worker_refuses_a_schema_migrated_elsewhere(db_dsn: str) -> None:
    settings = pgqueue.WorkerSettings(schema_name="not_there", burst=True)
    worker = pgqueue.Worker(db_dsn, _registry(Calls()), settings)
    with pytest.raises(
        pgqueue.errors.SchemaError, match=r"'not_there'.*pgqueue migrate --schema not_there"
    ):
        await asyncio.wait_for(worker.run(), timeout=30)


async def test_worker_and_migrate_refuse_a_schema_that_is_ahead(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("INSERT INTO pgqueue.migrations (version, name) VALUES (999, 'future')")
    calls = Calls()
    await pgqueue.enqueue(conn, "order.placed", {})
    worker = pgqueue.Worker(db_dsn, _registry(calls), pgqueue.WorkerSettings(burst=True))
    with pytest.raises(pgqueue.errors.SchemaError, match=r"version 999.*upgrade pgqueue"):
        await asyncio.wait_for(worker.run(), timeout=30)
    with pytest.raises(pgqueue.errors.SchemaError, match=r"version 999.*upgrade pgqueue"):
        await pgqueue.migrate(conn)
    assert calls == {}


# -- the schema itself: psql equivalence and snapshot -------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def normalized_dump(dsn: str, role: str, schema: str = "pgqueue") -> str:
    """``pg_dump --schema-only`` of one schema without comments, SETs and role names."""
    result = _run("pg_dump", "--schema-only", f"--schema={schema}", dsn)
    if result.returncode != 0 and "server version mismatch" in result.stderr:
        # The machine's pg_dump (15) refuses newer servers (the version matrix runs 16-18):
        # the PostgreSQL 18 bundled with the `embedded` extra of the dev install dumps them all.
        bundled = bundled_binaries()
        assert bundled is not None, f"no pg_dump for this server: {result.stderr.strip()}"
        result = _run(str(bundled / "pg_dump"), "--schema-only", f"--schema={schema}", dsn)
    assert result.returncode == 0, result.stderr
    lines: list[str] = []
    for line in result.stdout.splitlines():
        if line.startswith(
            ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")
        ):
            continue
        if line.startswith(("ALTER ", "GRANT ", "REVOKE ")):
            line = re.sub(rf"\b{re.escape(role)}\b", "<owner>", line)
        # pg_dump 15 sets a view's owner with ALTER TABLE, pg_dump 18 with ALTER VIEW: the
        # only difference between their dumps of this schema (checked on 15, 16, 17 and 18).
        line = re.sub(r"^ALTER VIEW ", "ALTER TABLE ", line)
        lines.append(line.rstrip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"


async def _role(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT current_user"))


async def test_psql_applied_files_equal_pgqueue_migrate(
    database_factory: Callable[..., str],
) -> None:
    """The README's psql recipe builds the same schema as `pgqueue migrate`."""
    by_psql = database_factory(migrated=False)
    by_migrate = database_factory(migrated=False)
    result = await asyncio.to_thread(
        _run,
        "psql",
        by_psql,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-1",
        "-c",
        "CREATE SCHEMA pgqueue",
        "-c",
        "SET search_path TO pgqueue",
        *(arg for path in MIGRATIONS for arg in ("-f", str(path))),
    )
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(by_migrate)
    try:
        await pgqueue.migrate(conn)
        role = await _role(conn)
    finally:
        await conn.close()

    psql_dump = await asyncio.to_thread(normalized_dump, by_psql, role)
    migrate_dump = await asyncio.to_thread(normalized_dump, by_migrate, role)
    assert "CREATE TABLE pgqueue.outbox" in psql_dump
    assert psql_dump == migrate_dump

    # ... and pgqueue accepts it: migrate is a no-op, a worker runs on it.
    conn = await asyncpg.connect(by_psql)
    try:
        assert await pgqueue.migrate(conn) == []
        event_id = await pgqueue.enqueue(conn, "order.placed", {})
        calls = Calls()
        await run_burst(by_psql, _registry(calls))
        assert calls == {(event_id, "h"): 1}
    finally:
        await conn.close()


async def test_migrated_schema_matches_the_snapshot(db_dsn: str, conn: asyncpg.Connection) -> None:
    """Schema changes are deliberate: PGQUEUE_UPDATE_SNAPSHOT=1 rewrites the snapshot."""
    dump = await asyncio.to_thread(normalized_dump, db_dsn, await _role(conn))
    if os.environ.get("PGQUEUE_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(dump)
    assert SNAPSHOT.exists(), f"no {SNAPSHOT.name}; create it with PGQUEUE_UPDATE_SNAPSHOT=1"
    assert dump == SNAPSHOT.read_text(), (
        f"the migrated schema differs from {SNAPSHOT.name} (made with pg_dump "
        "--schema-only; other PostgreSQL majors may format it differently). If the change is "
        "intended, rerun with PGQUEUE_UPDATE_SNAPSHOT=1 and commit the file."
    )


async def test_once_in_a_handler_uses_the_workers_schema(
    database_factory: Callable[..., str],
) -> None:
    dsn = database_factory(migrated=False)
    conn = await asyncpg.connect(dsn)
    try:
        await pgqueue.migrate(conn, "other_q")
        registry = pgqueue.Registry()

        @registry.on("t", retry=pgqueue.RetryPolicy(stop=stop_after_attempt(1)))
        async def effect(payload: dict[str, object], ctx: pgqueue.Context) -> None:
            async with ctx.pool.acquire() as c, c.transaction():
                await pgqueue.once(c, ctx)

        event_id = await pgqueue.enqueue(conn, "t", {}, schema="other_q")
        await run_burst(dsn, registry, schema_name="other_q")

        row = await outbox_row(conn, event_id, schema="other_q")
        assert (row["state"], row["last_error"]) == ("done", None)
        assert await conn.fetchval("SELECT count(*) FROM other_q.effects") == 1
    finally:
        await conn.close()


async def test_upgrade_to_domains_keeps_the_roles_working(
    database_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0009 and 0010 change column types under a deployed roles.sql: the producer's column
    grants and the worker's grant on handler_states survive, and the moved rules still refuse
    bad rows (by the same constraint name)."""
    dsn = database_factory(migrated=False)
    every = _migrate.load_migrations()
    conn = await asyncpg.connect(dsn)
    try:
        before = [m for m in every if m.version < 9]
        monkeypatch.setattr(_migrate, "load_migrations", lambda: before)
        await pgqueue.migrate(conn)
        # roles.sql as deployed at 0008: without the grants on tables of later migrations.
        deployed = "\n".join(
            line.replace("integer, text)", "integer)")  # enqueue() before 0017
            for line in _migrate.roles_sql("pgqueue").splitlines()
            if '"pgqueue".workers ' not in line  # 0013
            and '"pgqueue".queue_pauses ' not in line  # 0015
            and "(ordering_key)" not in line  # 0017
            and "rate_per_key" not in line  # 0018
            and "rate_buckets" not in line  # 0018
        )
        await conn.execute(deployed)
        await conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_test_app') "
            "THEN CREATE ROLE pgqueue_test_app LOGIN; END IF; END $$"
        )
        await conn.execute("GRANT pgqueue_producer TO pgqueue_test_app")
        monkeypatch.setattr(_migrate, "load_migrations", lambda: every)
        assert await pgqueue.migrate(conn) == [v for v in ALL_VERSIONS if v >= 9]
        # 0010 makes the view handler_states again: roles.sql's grant on it is kept.
        assert await conn.fetchval(
            "SELECT has_table_privilege('pgqueue_worker', 'pgqueue.handler_states', 'SELECT')"
        )
    finally:
        await conn.close()
    host = dsn.split("@", 1)[1]
    app = await asyncpg.connect(f"postgresql://pgqueue_test_app@{host}")
    try:
        assert await pgqueue.enqueue(app, "order.placed", {"n": 1}, queue="q", idempotency_key="k")
        assert await app.fetchval("SELECT pgqueue.enqueue('t', '{\"n\": 2}'::jsonb)")
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await app.execute("INSERT INTO pgqueue.outbox (event_type, queue) VALUES ('t', 'a b')")
        assert caught.value.constraint_name == "outbox_queue_format"
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await app.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('a b')")
        assert caught.value.constraint_name == "outbox_event_type_format"
    finally:
        await app.close()
