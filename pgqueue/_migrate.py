"""Schema migrations: numbered, forward-only SQL files applied in order.

Files are ``sql/NNNN_name.sql`` (shipped inside the wheel as the ``pgqueue.sql`` package).
Each runs in its own transaction with ``search_path`` set to the target schema and records
its own version, so the same files also work when applied with psql alone. A transaction-level
advisory lock taken by each of those transactions makes two concurrent ``pgqueue migrate``
runs safe (the second waits, then finds nothing left to do), also through a transaction-mode
pooler such as PgBouncer.

The server's version is checked first, here and at worker start (``check_schema``): the
supported range is the majors the test matrix runs on (docs/postgresql-versions.md).
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from ._errors import SchemaError
from ._settings import dsn_without_password, quote_ident, validate_schema

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = logging.getLogger("pgqueue")

# The PostgreSQL majors the whole test suite (15) and the compatibility matrix (16, 17, 18)
# run on in CI (.ci/run, tests/pgversions.py). Widen it only together with the matrix.
SUPPORTED_MAJORS = (15, 18)
SUPPORTED_RANGE = f"PostgreSQL {SUPPORTED_MAJORS[0]} to {SUPPORTED_MAJORS[1]}"


def judge_server_version(version_num: int, shown: str) -> str | None:
    """Raise SchemaError for a server older than the supported range; for a newer one return
    a warning to log (it is likely to work and refusing it would block upgrades); else None.

    ``version_num`` is ``server_version_num`` (180004), ``shown`` ``server_version`` (18.4).
    """
    major = version_num // 10000
    if major < SUPPORTED_MAJORS[0]:
        raise SchemaError(
            f"PostgreSQL {shown} is not supported: pgqueue supports {SUPPORTED_RANGE} "
            f"(docs/postgresql-versions.md); upgrade the server to {SUPPORTED_MAJORS[0]} or newer"
        )
    if major > SUPPORTED_MAJORS[1]:
        return (
            f"PostgreSQL {shown} is newer than the versions pgqueue is tested on "
            f"({SUPPORTED_RANGE}); it should work, report anything that does not"
        )
    return None


async def check_server_version(conn: asyncpg.Connection) -> int:
    """Check the server against the supported range (see ``judge_server_version``); return
    its ``server_version_num``. A query rather than asyncpg's startup parameter: through a
    pooler that parameter may be the pooler's own."""
    version_num, shown = await conn.fetchrow(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    )
    warning = judge_server_version(version_num, shown.split(" ")[0])
    if warning:
        log.warning("%s", warning)
    return int(version_num)


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


def _sql_files() -> list[tuple[str, str]]:
    try:
        folder = resources.files("pgqueue.sql")
        found = [
            (f.name, f.read_text("utf-8")) for f in folder.iterdir() if f.name.endswith(".sql")
        ]
        if found:
            return found
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    # Running from a source tree without an install: sql/ sits beside the package.
    source = Path(__file__).resolve().parent.parent / "sql"
    return [(p.name, p.read_text("utf-8")) for p in source.glob("*.sql")]


def load_migrations() -> list[Migration]:
    """Return every migration shipped with this version, in order."""
    migrations = []
    for filename, text in _sql_files():
        match = _FILE_RE.match(filename)
        if match:
            migrations.append(Migration(int(match.group(1)), match.group(2), text))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migration files are not numbered 1..n without gaps: {versions}")
    return migrations


def roles_sql(schema: str) -> str:
    """The roles script (sql/roles.sql) with the schema filled in, ready for psql."""
    text = dict(_sql_files())["roles.sql"]
    literal = "'" + validate_schema(schema) + "'"  # psql's :'schema' (no quote can occur)
    return text.replace(':"schema"', quote_ident(schema)).replace(":'schema'", literal)


def latest_version() -> int:
    """The schema version this code expects."""
    return load_migrations()[-1].version


async def applied_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The newest version applied in ``schema``, or None when it was never migrated."""
    # A query on pg_class, not to_regclass(): after waiting on the migration lock, the name
    # lookup may still answer from this session's catalog cache and miss the table that the
    # migration we waited for has just created; a query sees what is committed.
    exists = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'migrations')",
        schema,
    )
    if not exists:
        return None
    version: int | None = await conn.fetchval(
        f"SELECT max(version) FROM {quote_ident(schema)}.migrations"
    )
    return version


def _lock_key(schema: str) -> str:
    return f"pgqueue.migrate:{schema}"


async def migrate(conn: asyncpg.Connection, schema: str = "pgqueue") -> list[int]:
    """Apply the missing migrations to ``schema``; return the versions applied (maybe none).

    Raises SchemaError when the database is ahead of this code, or the server is older than
    the supported range.
    """
    validate_schema(schema)
    await check_server_version(conn)
    migrations = load_migrations()
    current = await applied_version(conn, schema) or 0  # checked again under the lock
    _refuse_ahead(schema, current, migrations[-1].version)
    applied = []
    for migration in migrations:
        if migration.version > current and await _apply(
            conn, schema, migration, migrations[-1].version
        ):
            applied.append(migration.version)
    return applied


async def _apply(conn: asyncpg.Connection, schema: str, migration: Migration, latest: int) -> bool:
    """Apply ``migration`` in a transaction of its own unless it is there; True if applied.

    Lock and version check sit inside that transaction: a concurrent migrate waits on the
    lock, then sees the version and skips. A transaction-level lock (not a session one) is
    also what works through a transaction-mode pooler, where the next statement may run in
    another server session; and nothing set here outlives the transaction for the same reason.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _lock_key(schema))
        current = await applied_version(conn, schema) or 0
        _refuse_ahead(schema, current, latest)
        if migration.version <= current:
            return False
        # The migration files set search_path for the session: give the caller theirs back
        # before the commit makes it stick.
        saved_path = await conn.fetchval("SELECT current_setting('search_path')")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        await conn.execute(migration.sql)
        await conn.execute("SELECT set_config('search_path', $1, false)", saved_path)
    return True


def _refuse_ahead(schema: str, current: int, latest: int) -> None:
    if current > latest:
        raise SchemaError(
            f"schema {schema!r} is at version {current}, newer than this pgqueue "
            f"(knows up to {latest}): upgrade pgqueue"
        )


async def check_schema(conn: asyncpg.Connection, schema: str, dsn_hint: str = "") -> None:
    """Raise SchemaError unless ``schema`` is at exactly the version this code expects, on a
    server in the supported range.

    ``dsn_hint``: the DSN in use; the fix names it, without its password, so the command can
    be pasted as it stands.
    """
    await check_server_version(conn)
    current = await applied_version(conn, schema)
    expected = latest_version()
    fix = f"run: pgqueue migrate --schema {schema}"
    if dsn_hint:
        shown, had_password = dsn_without_password(dsn_hint)
        fix += f" --dsn {shlex.quote(shown)}"
        fix += " (with the password in PGPASSWORD)" if had_password else ""
    if current is None:
        raise SchemaError(f"schema {schema!r} has no pgqueue tables in this database; {fix}")
    if current < expected:
        raise SchemaError(
            f"schema {schema!r} is at version {current}, this pgqueue needs {expected}; {fix}"
        )
    _refuse_ahead(schema, current, expected)
