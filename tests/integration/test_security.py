"""Security: least-privilege roles, SQL injection through every input, no secrets in logs."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import BaseModel

import pgqueue
import pgqueue.admin
from pgqueue._migrate import roles_sql
from tests.helpers import run_cli

MARKER = "s3cr3t-marker-7f3a"
ROOT = Path(__file__).resolve().parents[2]


class Order(BaseModel):
    """A payload model whose validation fails on the marker."""

    amount: int


@pytest.fixture
async def with_roles(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """The roles script applied through the real psql binary, as the README says."""
    await conn.execute(roles_sql("pgqueue"))
    yield conn
    await conn.execute("RESET ROLE")


def _psql_roles(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-v", "schema=pgqueue", "-f", "sql/roles.sql"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_roles_script_applies_with_psql_and_twice(db_dsn: str) -> None:
    first, second = _psql_roles(db_dsn), _psql_roles(db_dsn)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr


async def test_producer_may_only_enqueue(with_roles: asyncpg.Connection) -> None:
    conn = with_roles
    victim = await pgqueue.enqueue(conn, "order.placed", {"card": MARKER})
    await conn.execute("CREATE TABLE private_data (x int)")
    await conn.execute("SET ROLE pgqueue_producer")
    # Allowed: plain INSERT, the SQL function (idempotent), and the Python API.
    await conn.execute("INSERT INTO pgqueue.outbox (event_type, payload) VALUES ('a.b', '{}')")
    first = await conn.fetchval("SELECT pgqueue.enqueue('a.b', '{}', NULL, 'k-1')")
    assert await conn.fetchval("SELECT pgqueue.enqueue('a.b', '{}', NULL, 'k-1')") == first
    assert await pgqueue.enqueue(conn, "a.b", {}, idempotency_key="k-1") == first
    # Denied: reading payloads, changing or deleting events, other tables.
    denied = [
        "SELECT payload FROM pgqueue.outbox",
        f"UPDATE pgqueue.outbox SET state = 'done' WHERE id = {victim}",
        f"DELETE FROM pgqueue.outbox WHERE id = {victim}",
        "SELECT * FROM pgqueue.effects",
        "SELECT * FROM private_data",
        "INSERT INTO pgqueue.outbox (event_type, state) VALUES ('a.b', 'done')",
    ]
    for statement in denied:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    await conn.execute("RESET ROLE")
    assert await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", victim) == (
        "pending"
    )


async def test_ops_role_reads_but_cannot_write(with_roles: asyncpg.Connection) -> None:
    conn = with_roles
    await pgqueue.enqueue(conn, "order.placed", {})
    await conn.execute("SET ROLE pgqueue_ops")
    report = await pgqueue.admin.status(conn)
    assert [r.events for r in report.counts] == [1]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE pgqueue.outbox SET state = 'dead'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("SELECT pgqueue.enqueue('a.b')")


async def _worker_login(conn: asyncpg.Connection, db_dsn: str) -> str:
    """A DSN of a login role that is a member of pgqueue_worker (created once per cluster)."""
    await conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_test_worker')"
        " THEN CREATE ROLE pgqueue_test_worker LOGIN; END IF; END $$"
    )
    await conn.execute("GRANT pgqueue_worker TO pgqueue_test_worker")
    return (
        db_dsn.replace("://", "://pgqueue_test_worker@", 1)
        if "@" not in db_dsn
        else ("postgresql://pgqueue_test_worker@" + db_dsn.split("@", 1)[1])
    )


async def test_worker_role_runs_a_limited_handler_but_cannot_override_limits(
    with_roles: asyncpg.Connection, db_dsn: str
) -> None:
    conn = with_roles
    event_id = await pgqueue.enqueue(conn, "order.placed", {})
    registry = pgqueue.Registry()

    @registry.on("order.placed", concurrency=3)
    async def crm(payload: dict[str, Any]) -> None:
        return None

    worker_dsn = await _worker_login(conn, db_dsn)
    await pgqueue.Worker(worker_dsn, registry, pgqueue.WorkerSettings(burst=True)).run()
    assert await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id) == (
        "done"
    )
    # Its slots were made by the trigger (the worker may not insert them) and given back.
    free = "SELECT count(*) FROM pgqueue.handler_slots WHERE lease_token IS NULL"
    assert await conn.fetchval(free) == 3
    await conn.execute("SET ROLE pgqueue_worker")
    for statement in (
        "UPDATE pgqueue.handler_limits SET override = 100",
        "INSERT INTO pgqueue.handler_slots (handler, slot) VALUES ('crm', 4)",
        "DELETE FROM pgqueue.handler_slots",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    await conn.execute("SET ROLE pgqueue_ops")
    assert await conn.fetchval("SELECT concurrency FROM pgqueue.handler_limits") == 3
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE pgqueue.handler_limits SET override = 1")


async def test_worker_role_runs_a_worker(with_roles: asyncpg.Connection, db_dsn: str) -> None:
    conn = with_roles
    event_id = await pgqueue.enqueue(conn, "order.placed", {"n": 1})
    seen: list[int] = []
    registry = pgqueue.Registry()

    @registry.on("order.placed")
    async def record(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        seen.append(ctx.event_id)

    worker_dsn = await _worker_login(conn, db_dsn)
    await pgqueue.Worker(worker_dsn, registry, pgqueue.WorkerSettings(burst=True)).run()
    assert seen == [event_id]
    assert await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id) == (
        "done"
    )
    # The worker role cannot delete or change the schema.
    await conn.execute("SET ROLE pgqueue_worker")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM pgqueue.outbox")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DROP TABLE pgqueue.effects")


# Functions without `SET search_path`, each with its reason (sql/0016_notify_cost.sql): the
# notify trigger runs once per row at COMMIT, where the SET clause cost 11,500 instructions a
# row; it is not SECURITY DEFINER and qualifies every function, operator and type it uses.
UNPINNED = frozenset({"notify_outbox"})


async def test_unpinned_functions_qualify_every_name(conn: asyncpg.Connection) -> None:
    """An unpinned function still behaves the same under a hostile search_path."""
    source = await conn.fetchval(
        "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'pgqueue' AND p.proname = 'notify_outbox'"
    )
    assert source is not None
    # A schema first on the path, with a text type, an || operator and functions named like
    # the ones the trigger calls: none may be picked.
    await conn.execute(
        """
        CREATE SCHEMA hostile;
        CREATE FUNCTION hostile.pg_notify(text, text) RETURNS void LANGUAGE sql
            AS $$ SELECT pg_catalog.set_config('hostile.called', 'yes', true) $$;
        CREATE FUNCTION hostile.hashtext(text) RETURNS integer LANGUAGE sql
            AS $$ SELECT pg_catalog.set_config('hostile.called', 'yes', true)::int $$;
        SET search_path TO hostile, pg_catalog, pgqueue;
        """
    )
    async with conn.transaction():
        await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('hostile.check')")
        await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        called = await conn.fetchval("SELECT current_setting('hostile.called', true)")
    await conn.execute("RESET search_path")
    assert called in (None, ""), "the notify trigger called a function from the search_path"


async def test_security_definer_functions_pin_search_path(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT p.proname, p.prosecdef, p.proconfig, p.proacl::text AS acl "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'pgqueue'"
    )
    assert rows, "no functions found in schema pgqueue"
    for row in rows:
        config = row["proconfig"] or []
        if row["proname"] in UNPINNED:
            # Runs as the caller, and names nothing the caller's search_path could replace.
            assert not row["prosecdef"], row
            assert not any(c.startswith("search_path=") for c in config), row
            continue
        assert any(c.startswith("search_path=") and c.endswith("pg_temp") for c in config), (
            row["proname"],
            config,
        )
        if row["prosecdef"]:
            # PUBLIC ("=X/owner") must not be able to execute a SECURITY DEFINER function.
            assert row["acl"] is not None, row  # NULL ACL = the default, which includes PUBLIC
            entries = row["acl"].strip("{}").split(",")
            assert not any(e.startswith("=") for e in entries), row


INJECTIONS = [
    "x'; DROP TABLE pgqueue.outbox; --",
    'x"; DROP SCHEMA pgqueue CASCADE; --',
    "pgqueue.outbox",
    "a b",
    "Robert'); DELETE FROM pgqueue.outbox;--",
]


@pytest.mark.parametrize("evil", INJECTIONS)
async def test_sql_function_arguments_are_data(conn: asyncpg.Connection, evil: str) -> None:
    """Every argument of enqueue() is bound: hostile text is stored or rejected, never run."""
    key_id = await conn.fetchval("SELECT pgqueue.enqueue('a.b', '{}', NULL, $1)", evil)
    payload_id = await conn.fetchval(
        "SELECT pgqueue.enqueue('a.b', jsonb_build_object('v', $1::text))", evil
    )
    stored = 2
    for call, column in [
        ("SELECT pgqueue.enqueue($1, '{}')", "event_type"),
        ("SELECT pgqueue.enqueue('a.b', '{}', NULL, NULL, $1)", "queue"),
    ]:
        try:
            new_id = await conn.fetchval(call, evil)
        except asyncpg.CheckViolationError as exc:  # rejected by its format constraint
            assert exc.constraint_name.endswith("_format"), exc.constraint_name
        else:  # a legal name: stored verbatim
            stored += 1
            assert (
                await conn.fetchval(f"SELECT {column} FROM pgqueue.outbox WHERE id = $1", new_id)
                == evil
            )
    assert (
        await conn.fetchval("SELECT idempotency_key FROM pgqueue.outbox WHERE id = $1", key_id)
        == evil
    )
    assert (
        await conn.fetchval("SELECT payload->>'v' FROM pgqueue.outbox WHERE id = $1", payload_id)
        == evil
    )
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == stored


@pytest.mark.parametrize("evil", INJECTIONS)
async def test_cli_options_are_data(db_dsn: str, conn: asyncpg.Connection, evil: str) -> None:
    """Hostile text through every CLI option: rejected with one line, or stored as data."""
    runs = [
        run_cli("enqueue", "a.b", "{}", "--key", evil, "--dsn", db_dsn),
        run_cli("enqueue", "a.b", json.dumps({"v": evil}), "--dsn", db_dsn),
        run_cli("enqueue", evil, "{}", "--dsn", db_dsn),
        run_cli("enqueue", "a.b", "{}", "--queue", evil, "--dsn", db_dsn),
        run_cli("status", "--schema", evil, "--dsn", db_dsn),
        run_cli("retry", "--type", evil, "--dsn", db_dsn),
        run_cli("retry", "--handler", evil, "--dsn", db_dsn),
        run_cli("worker", "--burst", "--handlers", evil, "--dsn", db_dsn),
    ]
    for result in runs:
        assert "Traceback" not in result.stderr, result.stderr
        if result.returncode != 0:
            assert result.stderr.startswith("error:"), result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # The table survived; the key and the payload were stored as data (the type and queue
    # too where they are legal names, like "pgqueue.outbox").
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 2 + sum(
        r.returncode == 0 for r in (runs[2], runs[3])
    )
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE idempotency_key = $1 OR payload->>'v' = $1",
            evil,
        )
        == 2
    )


async def test_no_password_or_payload_in_logs_or_notify(
    db_dsn: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Run a worker with a password in its DSN over events whose payload holds a marker."""
    caplog.set_level(logging.DEBUG, logger="pgqueue")
    notifications: list[str] = []
    listener = await asyncpg.connect(db_dsn)
    await listener.add_listener("pgqueue.outbox", lambda *a: notifications.append(a[3]))
    registry = pgqueue.Registry()

    @registry.on("order.placed")
    async def fails(payload: dict[str, Any]) -> None:
        raise pgqueue.Discard("bad order")

    @registry.on("order.placed")
    async def typed(order: Order) -> None:
        pass

    await pgqueue.enqueue(conn, "order.placed", {"card": MARKER, "amount": MARKER})
    secret_dsn = (
        db_dsn.replace("://", f"://postgres:{MARKER}@", 1)
        if "@" not in db_dsn
        else (
            db_dsn.split("://", 1)[0]
            + "://"
            + db_dsn.split("://", 1)[1].split("@", 1)[0].split(":")[0]
            + f":{MARKER}@"
            + db_dsn.split("@", 1)[1]
        )
    )
    await pgqueue.Worker(secret_dsn, registry, pgqueue.WorkerSettings(burst=True)).run()
    await listener.fetchval("SELECT 1")  # deliver pending notifications
    await listener.close()
    assert await conn.fetchval("SELECT state FROM pgqueue.outbox") == "dead"
    assert caplog.records, "the worker logged nothing at all"
    assert MARKER not in caplog.text
    assert notifications and all(MARKER not in n for n in notifications)
    # The stored validation error names the field, not the value.
    errors = await conn.fetchval("SELECT string_agg(last_error, ' ') FROM pgqueue.handler_states")
    assert "amount" in errors and MARKER not in errors
    # And the CLI masks it in its one-line errors.
    result = run_cli("status", "--dsn", secret_dsn.replace(db_dsn.rsplit("/", 1)[1], "nodb_x"))
    assert result.returncode != 0 and MARKER not in result.stderr + result.stdout


async def test_no_password_or_payload_in_json_logs(db_dsn: str, conn: asyncpg.Connection) -> None:
    """The CLI worker with --log-format json at debug level, a password in its DSN and
    payloads holding the marker: every line is JSON, and the marker is in none of them."""
    await pgqueue.enqueue(conn, "order.placed", {"card": MARKER})  # bill fails, quoting it
    await pgqueue.enqueue(conn, "order.poison", {"card": MARKER})  # explode discards it
    parts = urlsplit(db_dsn)
    secret_dsn = urlunsplit(
        parts._replace(netloc=f"postgres:{MARKER}@{parts.netloc.rpartition('@')[2]}")
    )
    result = run_cli(
        "worker", "--burst", "--handlers", "tests.integration.observe_handlers:registry",
        "--log-format", "json", "--log-level", "debug", "--dsn", secret_dsn,
        cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(line.get("handler") == "explode" for line in lines), lines  # it did log
    assert any("***" in line["msg"] for line in lines), lines  # the masked DSN
    assert MARKER not in result.stderr + result.stdout


async def test_producer_login_enqueues_with_the_cli(
    with_roles: asyncpg.Connection, db_dsn: str
) -> None:
    """`pgqueue enqueue` checks the schema version first: the producer may read migrations."""
    conn = with_roles
    await conn.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgqueue_test_producer')"
        " THEN CREATE ROLE pgqueue_test_producer LOGIN; END IF; END $$"
    )
    await conn.execute("GRANT pgqueue_producer TO pgqueue_test_producer")
    producer_dsn = (
        "postgresql://pgqueue_test_producer@"
        + urlsplit(db_dsn).netloc.split("@")[-1]
        + urlsplit(db_dsn).path
    )
    result = run_cli("enqueue", "order.placed", '{"n": 1}', "--dsn", producer_dsn)
    assert result.returncode == 0, result.stderr
    event_id = int(result.stdout.strip())
    assert await conn.fetchval("SELECT event_type FROM pgqueue.outbox WHERE id = $1", event_id) == (
        "order.placed"
    )
