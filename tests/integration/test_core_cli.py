"""The pgqueue command: a burst worker, enqueue/status, --help, and one-line user errors."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

import pgqueue
from pgqueue._migrate import latest_version
from tests.helpers import run_cli
from tests.integration.core_support import outbox_row

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = "tests.integration.sample_handlers"
SECRET = "Sup3rSecretPw"


async def cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """run_cli in a thread, from the project root (so tests.* handler modules import)."""
    return await asyncio.to_thread(run_cli, *args, cwd=ROOT, **kwargs)  # type: ignore[arg-type]


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    """Exit ``code``, no traceback, exactly one stderr line starting 'error:'."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.returncode == code, (result.returncode, output)
    return lines[0]


# -- 10. worker --burst -----------------------------------------------------------------------


async def test_worker_burst_runs_the_handlers_and_exits_zero(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    ids = [await pgqueue.enqueue(conn, "sample.ping", {"n": n}) for n in range(2)]

    result = await cli("worker", "--dsn", db_dsn, "--handlers", f"{SAMPLE}:registry", "--burst")

    assert result.returncode == 0, result.stderr
    assert "burst done: 2 done, 0 retried later, 0 dead" in result.stdout
    effects = await conn.fetch("SELECT event_id, handler FROM pgqueue.effects ORDER BY 1, 2")
    assert [(r["event_id"], r["handler"]) for r in effects] == [
        (i, h) for i in ids for h in ("audit", "pong")
    ]
    for event_id in ids:
        assert (await outbox_row(conn, event_id))["state"] == "done"


async def test_worker_burst_on_an_empty_outbox_exits_zero(db_dsn: str) -> None:
    result = await cli(
        "worker", "--dsn", db_dsn, "--handlers", f"{SAMPLE}:registry", "--burst", "--no-listen"
    )
    assert result.returncode == 0, result.stderr
    assert "burst done: 0 done" in result.stdout


async def test_dsn_is_read_from_pgqueue_dsn(db_dsn: str, conn: asyncpg.Connection) -> None:
    await pgqueue.enqueue(conn, "sample.ping", {})
    result = await cli(
        "worker", "--handlers", f"{SAMPLE}:registry", "--burst", env={"PGQUEUE_DSN": db_dsn}
    )
    assert result.returncode == 0, result.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.effects") == 2


# -- enqueue / status / retry -----------------------------------------------------------------


async def test_enqueue_then_status_shows_the_event(db_dsn: str, conn: asyncpg.Connection) -> None:
    enqueued = await cli("enqueue", "order.placed", '{"order_id": 42}', "--dsn", db_dsn)
    assert enqueued.returncode == 0, enqueued.stderr
    event_id = int(enqueued.stdout.strip())
    row = await outbox_row(conn, event_id)
    assert (row["event_type"], row["payload"], row["state"]) == (
        "order.placed",
        {"order_id": 42},
        "pending",
    )

    shown = await cli("status", "--dsn", db_dsn)

    assert shown.returncode == 0, shown.stderr
    header, line = shown.stdout.splitlines()[:2]
    assert header.split()[:6] == ["event", "type", "pending", "running", "done", "dead"]
    assert line.split()[:5] == ["order.placed", "1", "0", "0", "0"]


async def test_status_of_an_empty_outbox(db_dsn: str) -> None:
    result = await cli("status", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the outbox is empty"


async def test_enqueue_with_a_key_twice_prints_the_same_id(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    first = await cli("enqueue", "t", "{}", "--key", "k-1", "--dsn", db_dsn)
    second = await cli("enqueue", "t", '{"other": 1}', "--key", "k-1", "--dsn", db_dsn)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 1


async def test_enqueue_with_a_delay_sets_run_at_in_the_future(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    result = await cli("enqueue", "t", "{}", "--delay", "10m", "--queue", "later", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    row = await conn.fetchrow(
        "SELECT queue, extract(epoch FROM run_at - now()) AS wait FROM pgqueue.outbox"
    )
    assert row["queue"] == "later"
    assert 500 < row["wait"] <= 600


# -- --help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["migrate", "worker", "enqueue", "status", "retry", "demo"])
async def test_help_of_each_command_exits_zero_and_names_pgqueue_dsn(command: str) -> None:
    result = await cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"pgqueue {command}" in result.stdout
    assert "PGQUEUE_DSN" in result.stdout


async def test_top_level_help_lists_the_commands() -> None:
    result = await cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("migrate", "worker", "enqueue", "status", "retry", "demo"):
        assert command in result.stdout
    assert "PGQUEUE_DSN" in result.stdout


# -- 12. user errors: one line, no traceback --------------------------------------------------


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        pytest.param(("enqueue", "t", "{bad"), 2, "not valid JSON", id="malformed-json"),
        pytest.param(("enqueue", "t", "[1, 2]"), 2, "must be a JSON object", id="payload-list"),
        pytest.param(("enqueue", "t", '"x"'), 2, "must be a JSON object", id="payload-string"),
        pytest.param(("enqueue", "t", "{}", "--run-at", "2030-01-01T00:00"), 2, "no time zone",
                     id="run-at-without-zone"),
        pytest.param(("enqueue", "t", "{}", "--delay", "soon"), 2, "not a duration",
                     id="bad-delay"),
        pytest.param(("enqueue", "bad type!", "{}"), 1, "outbox_event_type_format",
                     id="enqueue-bad-type"),
        pytest.param(("enqueue", "t", "{}", "--queue", "no spaces"), 1, "invalid queue name",
                     id="enqueue-bad-queue"),
        pytest.param(("status", "--bogus"), 2, "--bogus", id="unknown-option"),
        pytest.param(("frobnicate",), 2, "frobnicate", id="unknown-command"),
        pytest.param(("worker", "--concurrency", "0"), 2, "--concurrency", id="concurrency-0"),
        pytest.param(("worker", "--concurrency", "many"), 2, "--concurrency",
                     id="concurrency-text"),
        pytest.param(("worker", "--sync-threads", "0"), 2, "--sync-threads",
                     id="sync-threads-0"),
        pytest.param(("retry",), 2, "say which dead events", id="retry-without-filter"),
        pytest.param(("status", "--schema", 'pg"queue'), 1, "invalid schema name",
                     id="status-schema-quote"),
        pytest.param(("migrate", "--schema", "x; DROP SCHEMA public CASCADE"), 1,
                     "invalid schema name", id="migrate-schema-sql"),
        pytest.param(("worker", "--schema", "Bad'Name", "--burst"), 1, "invalid schema name",
                     id="worker-schema-quote"),
        pytest.param(("worker", "--handlers", "no_such_pgq_module:registry", "--burst"), 1,
                     "cannot import handlers module 'no_such_pgq_module'", id="handlers-import"),
        pytest.param(("worker", "--handlers", f"{SAMPLE}:nope", "--burst"), 1,
                     "has no attribute 'nope'", id="handlers-attribute"),
        pytest.param(("worker", "--handlers", f"{SAMPLE}:not_a_registry", "--burst"), 1,
                     "not a pgqueue.Registry", id="handlers-not-registry"),
        pytest.param(("worker", "--handlers", SAMPLE, "--burst"), 1, "MODULE:ATTRIBUTE",
                     id="handlers-no-colon"),
    ],
)  # fmt: skip
async def test_user_errors_print_one_line_and_exit_non_zero(
    shared_dsn: str, args: tuple[str, ...], code: int, fragment: str
) -> None:
    result = await cli(*args, "--dsn", shared_dsn)
    assert_one_line_error(result, code, fragment)


@pytest.mark.parametrize(
    "dsn, fragment",
    [
        pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:notaport/db", "malformed DSN",
                     id="bad-port"),
        pytest.param("mysql://app@127.0.0.1/db", "malformed DSN", id="wrong-scheme"),
        pytest.param(f"postgresql://app:{SECRET}@127.0.0.1:1/db", "cannot reach PostgreSQL",
                     id="closed-port"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["status", "worker"])
async def test_unusable_dsn_is_one_line_without_the_password(
    dsn: str, fragment: str, command: str
) -> None:
    extra = ("--handlers", f"{SAMPLE}:registry", "--burst") if command == "worker" else ()
    result = await cli(command, "--dsn", dsn, *extra)
    line = assert_one_line_error(result, 1, fragment)
    assert SECRET not in result.stdout + result.stderr
    assert "***" in line or SECRET not in dsn


async def test_password_never_appears_in_output(
    db_dsn: str, database_factory: Callable[..., str]
) -> None:
    """The server trusts local logins, so no password error: check the password is masked.

    (A real wrong-password error cannot be provoked here: pg_hba trusts 127.0.0.1.)
    """
    with_password = db_dsn.replace("://postgres@", f"://postgres:{SECRET}@")
    missing_db = with_password.rsplit("/", 1)[0] + "/pgq_no_such_database"
    result = await cli("status", "--dsn", missing_db)
    assert_one_line_error(result, 1, "does not exist", "postgres:***@")
    assert SECRET not in result.stdout + result.stderr

    unmigrated = database_factory(migrated=False).replace("://postgres@", f"://postgres:{SECRET}@")
    result = await cli("enqueue", "t", "{}", "--dsn", unmigrated)
    assert_one_line_error(result, 1, "pgqueue migrate")
    assert SECRET not in result.stdout + result.stderr

    assert "://postgres@" in db_dsn  # the replacements above really added a password


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("status",), id="status"),
        pytest.param(("enqueue", "t", "{}"), id="enqueue"),
        pytest.param(("retry", "--all"), id="retry"),
        pytest.param(("worker", "--handlers", f"{SAMPLE}:registry", "--burst"), id="worker"),
    ],
)
async def test_database_without_migrations_says_to_run_migrate(
    database_factory: Callable[..., str], args: tuple[str, ...]
) -> None:
    result = await cli(*args, "--dsn", database_factory(migrated=False))
    assert_one_line_error(result, 1, "pgqueue migrate")


@pytest.mark.parametrize("command", ["worker", "status"])
async def test_the_migrate_hint_names_the_dsn_and_schema_without_the_password(
    database_factory: Callable[..., str], command: str
) -> None:
    """The hint can be pasted as it stands: the same --dsn (password left to PGPASSWORD)."""
    plain = database_factory(migrated=False)
    with_password = plain.replace("://postgres@", f"://postgres:{SECRET}@")
    extra = ("--handlers", f"{SAMPLE}:registry", "--burst") if command == "worker" else ()
    result = await cli(command, "--dsn", with_password, "--schema", "shop_q", *extra)
    line = assert_one_line_error(
        result, 1, f"run: pgqueue migrate --schema shop_q --dsn {plain} (with the password in "
    )
    assert SECRET not in result.stdout + result.stderr and "***" not in line


async def test_migrate_command_applies_then_reports_up_to_date(
    database_factory: Callable[..., str],
) -> None:
    dsn = database_factory(migrated=False)
    first = await cli("migrate", "--dsn", dsn)
    second = await cli("migrate", "--dsn", dsn)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    versions = list(range(1, latest_version() + 1))
    assert f"applied migration(s) {', '.join(map(str, versions))}" in first.stdout
    assert f"up to date (version {versions[-1]})" in second.stdout
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT max(version) FROM pgqueue.migrations") == versions[-1]
    finally:
        await conn.close()


async def test_no_dsn_anywhere_is_a_one_line_error() -> None:
    result = await cli("status", env={"PGQUEUE_DSN": "", "DATABASE_URL": ""})
    assert_one_line_error(result, 1, "no database given")
