"""What every ``pgqueue`` command shares: the click group, common options, database access,
confirmation and tables (the parsing of durations and times is pgqueue/_parse.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from .._db import connect
from .._errors import ConfigurationError
from .._logs import LOG_FORMATS, LOG_LEVELS
from .._migrate import check_schema
from .._settings import DEFAULT_SCHEMA, DISTRIBUTION, mask_dsn, validate_schema

T = TypeVar("T")

DSN_HELP = (
    "PostgreSQL DSN (postgresql://user:pass@host:port/db). Default: $PGQUEUE_DSN, then "
    "$DATABASE_URL."
)


NO_DSN = (
    "no database given: pass --dsn postgresql://user@host/db or set PGQUEUE_DSN (or DATABASE_URL)"
)


def dsn_option(required_note: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--dsn",
        envvar=["PGQUEUE_DSN", "DATABASE_URL"],
        default=None,
        show_envvar=True,
        help=DSN_HELP + required_note,
    )


def data_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        envvar="PGQUEUE_DATA_DIR",
        show_envvar=True,
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="Data directory of the private PostgreSQL [default: ./.pgqueue/pg; as root, when "
        "user pgqueue cannot reach it, /var/lib/pgqueue/<folder>-<hash>/pg].",
    )(fn)


def schema_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--schema, validated here, once: every command gets a name that is safe to quote."""
    return click.option(
        "--schema",
        envvar="PGQUEUE_SCHEMA",
        default=DEFAULT_SCHEMA,
        show_default=True,
        show_envvar=True,
        callback=lambda _ctx, _param, value: validate_schema(value),
        help="Schema that holds the pgqueue tables.",
    )(fn)


def log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level and --log-format, for every command that runs a long-lived process."""
    fn = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        default="text",
        show_default=True,
        envvar="PGQUEUE_LOG_FORMAT",
        show_envvar=True,
        help="text: one readable line per record; json: one JSON object per line (ts, level, "
        "logger, msg, worker_id and fields such as event_id, event_type, handler, attempt, "
        "error).",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        envvar="PGQUEUE_LOG_LEVEL",
        show_envvar=True,
        help="Least severe log records to write (to stderr).",
    )(fn)


def echo_err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


@contextlib.asynccontextmanager
async def database(
    dsn: str | None, *, embedded_ok: bool, data_dir: Path | None = None
) -> AsyncIterator[str]:
    """Yield a DSN: the given one, or (where allowed) a private server started for this run in
    ``data_dir`` (default: ``_serviceuser.default_data_dir``)."""
    if dsn:
        yield dsn
        return
    if not embedded_ok:
        raise ConfigurationError(NO_DSN)
    from .._embedded import EmbeddedPostgres  # only needed without a DSN
    from .._serviceuser import default_data_dir

    def start() -> tuple[EmbeddedPostgres, str]:
        where = data_dir.absolute() if data_dir else default_data_dir(Path.cwd())
        server = EmbeddedPostgres(where)
        return server, server.start()

    server, started = await asyncio.to_thread(start)
    click.echo(f"no --dsn given: {server.description}", err=True)
    try:
        yield started
    finally:
        await asyncio.to_thread(server.stop)


async def with_conn(
    dsn: str, schema: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, check: bool = True
) -> T:
    conn = await connect(dsn)
    try:
        if check:
            await check_schema(conn, schema, dsn_hint=dsn)
        return await fn(conn)
    except asyncpg.InsufficientPrivilegeError as exc:
        # A role without the grants a command needs is a setup matter, not a bug.
        raise ConfigurationError(
            f"{exc.args[0] if exc.args else exc} for the role of {mask_dsn(dsn)}: this command "
            "needs more privileges; see 'pgqueue roles' (pgqueue_ops reads, pgqueue_worker "
            "runs and retries)"
        ) from exc
    finally:
        await conn.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name=DISTRIBUTION)
def cli() -> None:
    """pgqueue: a Postgres-only job queue and transactional outbox.

    Environment variables: PGQUEUE_DSN, then DATABASE_URL (the database); PGQUEUE_SCHEMA
    (the schema, default pgqueue).
    """


def table_lines(rows: list[list[str]], right: Container[int]) -> list[str]:
    """Rows as aligned lines, columns two spaces apart; columns in ``right`` right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


# Event types are data: a producer bug that puts ids into them makes 100,000 types. Human
# output shows this many by default (most backlog first) and says how many more there are.
STATUS_TOP = 50

V = TypeVar("V")


def by_backlog(
    groups: Mapping[str, V], backlog: Mapping[str, int], top: int | None
) -> list[tuple[str, V]]:
    """The ``top`` groups (None: all), largest backlog first, then by name: O(n log top)."""
    items = groups.items()

    def key(item: tuple[str, V]) -> tuple[int, str]:
        return -backlog.get(item[0], 0), item[0]

    return sorted(items, key=key) if top is None else heapq.nsmallest(top, items, key=key)


def more_lines(hidden: int, what: str) -> list[str]:
    """The line saying how many rows a bounded table left out (none when it left none)."""
    if hidden <= 0:
        return []
    return [f"... and {hidden} more {what}{'s' if hidden != 1 else ''} (--all shows all)"]


def print_table(rows: list[list[str]]) -> None:
    """Print rows with the first column left-aligned and the others right-aligned."""
    for line in table_lines(rows, right=range(1, len(rows[0]))):
        click.echo(line)


def confirm(yes: bool, question: str) -> None:
    """Ask before a destructive operation; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to confirm on: pass --yes (or --dry-run)")
    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()
