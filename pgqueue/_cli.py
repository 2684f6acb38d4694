"""The ``pgqueue`` command: options -> settings -> one library call -> output / exit code.

User errors (PgQueueError, bad options) print one line and exit non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from ._api import count_prunable, enqueue, prune, retry, status
from ._db import connect
from ._errors import ConfigurationError, PayloadError, PgQueueError
from ._migrate import check_schema, latest_version, migrate, roles_sql
from ._registry import Registry, load_registry
from ._settings import DEFAULT_SCHEMA, WorkerSettings, mask_dsn, validate_schema
from ._worker import Worker

T = TypeVar("T")
EMBEDDED_DIR = Path(".pgqueue") / "pg"

DSN_HELP = (
    "PostgreSQL DSN (postgresql://user:pass@host:port/db). Default: $PGQUEUE_DSN, then "
    "$DATABASE_URL."
)


def _dsn_option(required_note: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--dsn",
        envvar=["PGQUEUE_DSN", "DATABASE_URL"],
        default=None,
        show_envvar=True,
        help=DSN_HELP + required_note,
    )


def _schema_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--schema",
        envvar="PGQUEUE_SCHEMA",
        default=DEFAULT_SCHEMA,
        show_default=True,
        show_envvar=True,
        help="Schema that holds the pgqueue tables.",
    )(fn)


def _echo_err(message: str) -> None:
    click.echo(f"error: {message}", err=True)


@contextlib.asynccontextmanager
async def _database(dsn: str | None, *, embedded_ok: bool) -> AsyncIterator[str]:
    """Yield a DSN: the given one, or (where allowed) a bundled server started for this run."""
    if dsn:
        yield dsn
        return
    if not embedded_ok:
        raise ConfigurationError(
            "no database given: pass --dsn postgresql://user@host/db or set PGQUEUE_DSN"
        )
    from ._embedded import EmbeddedPostgres  # only needed without a DSN

    server = EmbeddedPostgres(EMBEDDED_DIR.resolve())
    started = await asyncio.to_thread(server.start)
    click.echo(f"no --dsn given: {server.description}", err=True)
    try:
        yield started
    finally:
        await asyncio.to_thread(server.stop)


async def _with_conn(
    dsn: str, schema: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, check: bool = True
) -> T:
    conn = await connect(dsn)
    try:
        if check:
            await check_schema(conn, schema, dsn_hint=mask_dsn(dsn))
        return await fn(conn)
    finally:
        await conn.close()


def _parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration; use e.g. 30s, 10m, 2h, 1d")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return float(match.group(1)) * factor


def _parse_run_at(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-12-01T09:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; add one, e.g. +00:00 or Z")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pgqueue")
def cli() -> None:
    """pgqueue: a Postgres-only job queue and transactional outbox.

    Environment variables: PGQUEUE_DSN, then DATABASE_URL (the database); PGQUEUE_SCHEMA
    (the schema, default pgqueue).
    """


@cli.command("migrate")
@_dsn_option()
@_schema_option
def migrate_cmd(dsn: str | None, schema: str) -> None:
    """Create or upgrade the pgqueue tables (safe to run again, and from two places at once)."""
    validate_schema(schema)

    async def main() -> None:
        async with _database(dsn, embedded_ok=False) as real_dsn:
            applied = await _with_conn(real_dsn, schema, lambda c: migrate(c, schema), check=False)
        if applied:
            click.echo(
                f"schema {schema}: applied migration(s) {', '.join(map(str, applied))}; "
                f"now at version {applied[-1]}"
            )
        else:
            click.echo(f"schema {schema}: up to date (version {latest_version()})")

    asyncio.run(main())


@cli.command("roles")
@_schema_option
def roles_cmd(schema: str) -> None:
    """Print the SQL that creates the producer, worker and ops roles (pipe it to psql)."""
    click.echo(roles_sql(validate_schema(schema)), nl=False)


@cli.command("worker")
@_dsn_option(" Without any, a bundled PostgreSQL is started (and migrated) for this run.")
@_schema_option
@click.option(
    "--handlers",
    "handlers_path",
    default="handlers:registry",
    show_default=True,
    envvar="PGQUEUE_HANDLERS",
    show_envvar=True,
    help="MODULE:ATTRIBUTE of the pgqueue.Registry to serve.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    default=("default",),
    show_default=True,
    help="Queue to serve (repeat for several).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Handlers running at once.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Events claimed per statement.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.001, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between polls when NOTIFY is silent.",
)
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(0.1, 86_400),
    default=30.0,
    show_default=True,
    help="Seconds a claim lasts without a heartbeat.",
)
@click.option(
    "--heartbeat",
    "heartbeat_seconds",
    type=click.FloatRange(0.01, 86_400),
    default=None,
    help="Seconds between lease renewals [default: lease / 3].",
)
@click.option(
    "--rescue-interval",
    type=click.FloatRange(0.01, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between scans for expired leases.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0, 86_400),
    default=10.0,
    show_default=True,
    help="Seconds to let in-flight handlers finish on SIGINT/SIGTERM.",
)
@click.option("--burst", is_flag=True, help="Exit 0 once nothing is ready.")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes to run (one event loop each; use one per core).",
)
@click.option("--no-listen", is_flag=True, help="Poll only (no LISTEN), e.g. behind PgBouncer.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def worker_cmd(
    dsn: str | None,
    schema: str,
    handlers_path: str,
    queues: tuple[str, ...],
    concurrency: int,
    batch_size: int,
    poll_interval: float,
    lease_seconds: float,
    heartbeat_seconds: float | None,
    rescue_interval: float,
    shutdown_timeout: float,
    burst: bool,
    processes: int,
    no_listen: bool,
    log_level: str,
) -> None:
    """Run the handlers of --handlers for every event written to the outbox.

    SIGINT/SIGTERM stop claiming and let in-flight handlers finish (up to
    --shutdown-timeout); a second signal hands everything back at once.
    """
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = _settings(
        schema=schema,
        queues=queues,
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=poll_interval,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        rescue_interval=rescue_interval,
        shutdown_timeout=shutdown_timeout,
        burst=burst,
        listen=not no_listen,
    )
    registry = _load(handlers_path)

    async def main() -> None:
        async with _database(dsn, embedded_ok=True) as real_dsn:
            if not dsn:
                await _with_conn(real_dsn, schema, lambda c: migrate(c, schema), check=False)
            if processes > 1:
                await _run_processes(processes, real_dsn)
                return
            worker = Worker(real_dsn, registry, settings)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, worker.request_stop)
            stats = await worker.run()
        if burst:
            click.echo(
                f"burst done: {stats.done} done, {stats.retried} retried later, {stats.dead} dead"
            )

    asyncio.run(main())


async def _run_processes(count: int, dsn: str) -> None:
    """Run ``count`` copies of this worker command as child processes and supervise them.

    SIGINT/SIGTERM are passed on to every child (a second one too); the parent exits when all
    children have, with the first non-zero exit code.
    """
    args = _child_args(sys.argv[1:])
    env = {**os.environ, "PGQUEUE_DSN": dsn}  # never on a command line: ps shows those
    children = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, *args, env=env)
        for _ in range(count)
    ]
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)
    codes = await asyncio.gather(*(child.wait() for child in children))
    bad = [c for c in codes if c != 0]
    if bad:
        raise SystemExit(bad[0])


_CHILD = "from pgqueue._cli import main; main()"


def _child_args(argv: list[str]) -> list[str]:
    """This command line without --processes and --dsn (the child gets the DSN by env)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--processes", "--dsn"):
            skip = True
            continue
        if arg.startswith(("--processes=", "--dsn=")):
            continue
        out.append(arg)
    return out


def _settings(**values: Any) -> WorkerSettings:
    try:
        return WorkerSettings(schema_name=values.pop("schema"), **values)
    except ValueError as exc:  # pydantic ValidationError: report the first problem only
        errors: list[Any] = getattr(exc, "errors", list)()
        if errors:
            first = errors[0]
            cause = first.get("ctx", {}).get("error")
            raise ConfigurationError(
                str(cause) if cause else f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
        raise ConfigurationError(str(exc)) from None


def _load(path: str) -> Registry:
    # Like uvicorn and celery: the current directory is importable, so `--handlers
    # handlers:registry` works from a project root even when run as a console script.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_registry(path)


@cli.command("enqueue")
@click.argument("event_type")
@click.argument("payload_json", default="{}")
@click.option("--run-at", type=str, default=None, help="ISO 8601 time with zone to run at.")
@click.option("--delay", type=str, default=None, help="Run after a delay, e.g. 30s, 10m, 2h.")
@click.option("--key", default=None, help="Idempotency key: a second enqueue is a no-op.")
@click.option("--queue", default="default", show_default=True)
@_dsn_option()
@_schema_option
def enqueue_cmd(
    event_type: str,
    payload_json: str,
    run_at: str | None,
    delay: str | None,
    key: str | None,
    queue: str,
    dsn: str | None,
    schema: str,
) -> None:
    """Write one event (its own transaction) and print its id."""
    validate_schema(schema)
    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"PAYLOAD_JSON is not valid JSON ({exc.msg} at column "
            f"{exc.colno}); e.g. '{{\"order_id\": 42}}'"
        ) from None
    if not isinstance(payload, dict):
        raise click.BadParameter(
            f"PAYLOAD_JSON must be a JSON object, not "
            f"{type(payload).__name__}; e.g. '{{\"order_id\": 42}}'"
        )
    if run_at and delay:
        raise click.BadParameter("give --run-at or --delay, not both")
    when = _parse_run_at(run_at) if run_at else None
    if delay:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=_parse_duration(delay))

    async def main() -> int:
        async with _database(dsn, embedded_ok=False) as real_dsn:
            return await _with_conn(
                real_dsn,
                schema,
                lambda c: enqueue(
                    c,
                    event_type,
                    payload,
                    run_at=when,
                    idempotency_key=key,
                    queue=queue,
                    schema=schema,
                ),
            )

    click.echo(asyncio.run(main()))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


@cli.command("status")
@_dsn_option()
@_schema_option
def status_cmd(dsn: str | None, schema: str) -> None:
    """Show events per type and state, the oldest ready age, and dead handlers."""
    validate_schema(schema)

    async def main() -> Any:
        async with _database(dsn, embedded_ok=False) as real_dsn:
            return await _with_conn(real_dsn, schema, lambda c: status(c, schema=schema))

    report = asyncio.run(main())
    types = sorted({r.event_type for r in report.counts})
    states = ["pending", "running", "done", "dead"]
    table = [["event type", *states, "oldest ready"]]
    for t in types:
        rows = {r.state: r for r in report.counts if r.event_type == t}
        ages = [r.oldest_ready_age for r in rows.values() if r.oldest_ready_age is not None]
        table.append(
            [
                t,
                *(str(rows[s].events) if s in rows else "0" for s in states),
                _age(max(ages) if ages else None),
            ]
        )
    if len(table) == 1:
        click.echo("the outbox is empty")
    else:
        _print_table(table)
    if report.dead_handlers:
        click.echo("")
        _print_table(
            [
                ["event type", "dead handler", "events"],
                *([t, h, str(n)] for t, h, n in report.dead_handlers),
            ]
        )


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


@cli.command("retry")
@click.option("--id", "ids", type=int, multiple=True, help="Event id (repeat for several).")
@click.option("--type", "event_type", default=None, help="Only events of this type.")
@click.option("--handler", default=None, help="Only this dead handler (others stay dead).")
@click.option("--all", "all_dead", is_flag=True, help="Every dead event.")
@_dsn_option()
@_schema_option
def retry_cmd(
    ids: tuple[int, ...],
    event_type: str | None,
    handler: str | None,
    all_dead: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Send dead events back to pending: only their dead handlers run again."""
    validate_schema(schema)
    if not (ids or event_type or handler or all_dead):
        raise click.UsageError("say which dead events to retry: --id, --type, --handler or --all")

    async def main() -> list[int]:
        async with _database(dsn, embedded_ok=False) as real_dsn:
            return await _with_conn(
                real_dsn,
                schema,
                lambda c: retry(
                    c, ids=list(ids) or None, event_type=event_type, handler=handler, schema=schema
                ),
            )

    done = asyncio.run(main())
    click.echo(f"{len(done)} dead event(s) sent back to pending")


@cli.command("prune")
@click.option(
    "--older-than",
    required=True,
    help="Age, e.g. 7d, 12h, 30m: done events processed longer ago than this are deleted.",
)
@click.option(
    "--dead",
    "include_dead",
    is_flag=True,
    help="Also delete dead events created longer ago than --older-than.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Rows per DELETE (each its own transaction).",
)
@click.option("--dry-run", is_flag=True, help="Only say how many events would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts, cron).")
@_dsn_option()
@_schema_option
def prune_cmd(
    older_than: str,
    include_dead: bool,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Delete old processed events in small batches (never holds long locks)."""
    validate_schema(schema)
    age = dt.timedelta(seconds=_parse_duration(older_than))
    what = "done" + (" and dead" if include_dead else "")

    async def main() -> None:
        async with _database(dsn, embedded_ok=False) as real_dsn:
            conn = await connect(real_dsn)
            try:
                await check_schema(conn, schema, dsn_hint=mask_dsn(real_dsn))
                total = await count_prunable(conn, age, include_dead=include_dead, schema=schema)
                click.echo(f"{total} {what} event(s) older than {older_than} to delete")
                if dry_run or total == 0:
                    return
                _confirm(yes, f"delete {total} event(s)?")
                deleted = await prune(
                    conn,
                    age,
                    include_dead=include_dead,
                    batch_size=batch_size,
                    schema=schema,
                    progress=lambda n: click.echo(f"\rdeleted {n}/{total}", nl=False, err=True),
                )
                click.echo("", err=True)
                click.echo(f"deleted {deleted} event(s)")
            finally:
                await conn.close()

    asyncio.run(main())


def _confirm(yes: bool, question: str) -> None:
    """Ask before a destructive operation; without a terminal, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to confirm on: pass --yes (or --dry-run)")
    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()


@cli.command("demo")
@_dsn_option(" Without any, a bundled PostgreSQL is started for the demo.")
@_schema_option
@click.option(
    "--demo",
    "demo_path",
    default="handlers.demo:run",
    show_default=True,
    help="MODULE:FUNCTION of the demo scenario.",
)
def demo_cmd(dsn: str | None, schema: str, demo_path: str) -> None:
    """Checkout with synchronous post-purchase work vs. with the outbox, side by side."""
    validate_schema(schema)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = demo_path.partition(":")
    try:
        import importlib

        scenario = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot load the demo {demo_path!r} ({exc}); run it from the "
            "pgqueue source tree or pass --demo MODULE:FUNCTION"
        ) from exc

    async def main() -> None:
        async with _database(dsn, embedded_ok=True) as real_dsn:
            await _with_conn(real_dsn, schema, lambda c: migrate(c, schema), check=False)
            await scenario(real_dsn, schema, click.echo)

    asyncio.run(main())


def main() -> None:
    """Console entry point: one line per user error, exit 1 (2 for usage errors)."""
    try:
        cli.main(standalone_mode=False, prog_name="pgqueue")
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "pgqueue"
        _echo_err(f"{exc.format_message()} (see '{command} --help')")
        sys.exit(2)
    except click.ClickException as exc:
        _echo_err(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _echo_err("aborted")
        sys.exit(130)
    except PayloadError as exc:
        _echo_err(str(exc))
        sys.exit(1)
    except PgQueueError as exc:
        _echo_err(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
