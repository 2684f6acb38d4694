"""Commands that set up and inspect the outbox: migrate, roles, enqueue, status, prune."""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import json

import asyncpg
import click

from .._api import (
    EXACT_STATUS_ROWS,
    STATUS_HELD_BACK,
    StatusReport,
    StatusRow,
    count_prunable,
    enqueue,
    prune,
    status,
)
from .._migrate import latest_version, migrate, roles_sql
from .._models import PRIORITY_MAX, PRIORITY_MIN
from .._parse import format_age, parse_duration, parse_run_at
from .._pauses import QueuePause
from .._queries import database_now
from .common import (
    STATUS_TOP,
    by_backlog,
    database,
    dsn_option,
    more_lines,
    print_table,
    schema_option,
    with_conn,
)
from .events import print_held_back
from .progress import preview, progress, run
from .watch import pause_lines, watch_status


@click.command("migrate")
@dsn_option()
@schema_option
def migrate_cmd(dsn: str | None, schema: str) -> None:
    """Create or upgrade the pgqueue tables (safe to run again, and from two places at once)."""

    async def main() -> None:
        async with database(dsn, embedded_ok=False) as real_dsn:
            applied = await with_conn(real_dsn, schema, lambda c: migrate(c, schema), check=False)
        if applied:
            click.echo(
                f"schema {schema}: applied migration(s) {', '.join(map(str, applied))}; "
                f"now at version {applied[-1]}"
            )
        else:
            click.echo(f"schema {schema}: up to date (version {latest_version()})")

    asyncio.run(main())


@click.command("roles")
@schema_option
def roles_cmd(schema: str) -> None:
    """Print the SQL that creates the producer, worker and ops roles (pipe it to psql)."""
    click.echo(roles_sql(schema), nl=False)


@click.command("enqueue")
@click.argument("event_type")
@click.argument("payload_json", default="{}")
@click.option("--run-at", type=str, default=None, help="ISO 8601 time with zone to run at.")
@click.option("--delay", type=str, default=None, help="Run after a delay, e.g. 30s, 10m, 2h.")
@click.option("--key", default=None, help="Idempotency key: a second enqueue is a no-op.")
@click.option("--queue", default="default", show_default=True, help="Queue to write to.")
@click.option(
    "--priority",
    type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX),
    default=0,
    show_default=True,
    help="Of the ready events in a queue, higher priorities are claimed first.",
)
@click.option(
    "--ordering-key",
    default=None,
    help="Ordered handlers run the events of one key one at a time, in id order.",
)
@dsn_option()
@schema_option
def enqueue_cmd(
    event_type: str,
    payload_json: str,
    run_at: str | None,
    delay: str | None,
    key: str | None,
    queue: str,
    priority: int,
    ordering_key: str | None,
    dsn: str | None,
    schema: str,
) -> None:
    """Write one event (its own transaction) and print its id."""
    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"PAYLOAD_JSON is not valid JSON ({exc.msg} at column "
            f"{exc.colno}); e.g. '{{\"order_id\": 42}}'"
        ) from None
    except (ValueError, RecursionError) as exc:  # over 4,300 digits; nested too deep
        raise click.BadParameter(
            f"PAYLOAD_JSON cannot be read ({type(exc).__name__}: {str(exc)[:100]}); a handler "
            "could not decode it either"
        ) from None
    if not isinstance(payload, dict):
        raise click.BadParameter(
            f"PAYLOAD_JSON must be a JSON object, not "
            f"{type(payload).__name__}; e.g. '{{\"order_id\": 42}}'"
        )
    if run_at and delay:
        raise click.BadParameter("give --run-at or --delay, not both")
    when = parse_run_at(run_at) if run_at else None
    wait = dt.timedelta(seconds=parse_duration(delay)) if delay else None

    async def write(conn: asyncpg.Connection) -> int:
        # --delay counts from the database clock, like every due time (not this host's).
        due = await database_now(conn) + wait if wait is not None else when
        return await enqueue(
            conn,
            event_type,
            payload,
            run_at=due,
            idempotency_key=key,
            queue=queue,
            priority=priority,
            ordering_key=ordering_key,
            schema=schema,
        )

    async def main() -> int:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, write)

    click.echo(asyncio.run(main()))


@click.command("status")
@click.option(
    "--watch",
    is_flag=True,
    help="Refresh until Ctrl-C: pending / running / dead per type and handler, events done "
    "per second, oldest ready age. Counts only recent done events, so it stays cheap.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=None,
    help="Seconds between refreshes with --watch (also the throughput window) [default: 2].",
)
@click.option(
    "--exact",
    is_flag=True,
    help="Count every done event, however large the outbox (one scan of the table).",
)
@click.option(
    "--top",
    type=click.IntRange(1, 1_000_000),
    default=STATUS_TOP,
    show_default=True,
    help="Show the event types (and dead handlers) with the largest backlog (pending + "
    "running + dead) first, this many; a last line says how many more there are.",
)
@click.option("--all", "show_all", is_flag=True, help="Show every event type (no --top).")
@dsn_option()
@schema_option
def status_cmd(
    watch: bool,
    interval: float | None,
    exact: bool,
    top: int,
    show_all: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Show events per type and state, the oldest ready age, and dead handlers.

    Pending, running and dead counts are exact. Done counts are exact up to 1,000,000 rows
    in the outbox and estimated from a sample above that (shown as ~N) unless --exact.
    """
    if interval is not None and not watch:
        raise click.UsageError("--interval only applies with --watch")
    if exact and watch:
        raise click.UsageError("--exact does not apply with --watch (it counts no done totals)")
    shown = None if show_all else top
    if watch:
        watch_status(dsn, schema, interval or 2.0, shown)
        return
    limit = None if exact else EXACT_STATUS_ROWS

    async def main() -> StatusReport:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(
                real_dsn, schema, lambda c: status(c, schema=schema, exact_limit=limit)
            )

    print_status(asyncio.run(main()), shown)


def print_status(report: StatusReport, top: int | None) -> None:
    """Print the report: the ``top`` event types by backlog (None: all), then a line saying
    how many more. One pass over the counts: grouping by type inside a loop over the types
    was quadratic (20,000 types: 76 s; 100,000 types never finished)."""
    states = ["pending", "running", "done", "dead", "discarded", "cancelled"]
    by_type: dict[str, dict[str, StatusRow]] = {}
    backlog: dict[str, int] = {}
    for row in report.counts:
        by_type.setdefault(row.event_type, {})[row.state] = row
        if row.state in BACKLOG:
            backlog[row.event_type] = backlog.get(row.event_type, 0) + row.events
    table = [["event type", *states, "oldest ready"]]
    for t, rows in by_backlog(by_type, backlog, top):
        ages = [r.oldest_ready_age for r in rows.values() if r.oldest_ready_age is not None]
        table.append(
            [
                t,
                *(_count(rows[s]) if s in rows else "0" for s in states),
                format_age(max(ages) if ages else None),
            ]
        )
    if len(table) == 1:
        click.echo("the outbox is empty")
    else:
        print_table(table)
        for line in more_lines(len(by_type) - (len(table) - 1), "event type"):
            click.echo(line)
    if any(r.estimated for r in report.counts):
        click.echo("~ done counts estimated from a sample of the table; --exact counts all")
    print_pauses(report.paused)
    if report.dead_handlers:
        dead = heapq.nsmallest(
            len(report.dead_handlers) if top is None else top,
            report.dead_handlers,
            key=lambda d: (-d[2], d[0], d[1]),
        )
        click.echo("")
        print_table(
            [["event type", "dead handler", "events"], *([t, h, str(n)] for t, h, n in dead)]
        )
        for line in more_lines(len(report.dead_handlers) - len(dead), "dead handler"):
            click.echo(line)
    if report.held_back:
        print_held_back(report.held_back, more=len(report.held_back) >= STATUS_HELD_BACK)


def print_pauses(pauses: list[QueuePause]) -> None:
    """The paused queues, with who paused them, since when and why (nothing when none)."""
    for line in pause_lines(pauses):
        click.echo(line)


BACKLOG = ("pending", "running", "dead")


def _count(row: StatusRow) -> str:
    return f"~{row.events}" if row.estimated else str(row.events)


@click.command("prune")
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
    "--discarded",
    "include_discarded",
    is_flag=True,
    help="Also delete discarded events created longer ago than --older-than.",
)
@click.option(
    "--cancelled",
    "include_cancelled",
    is_flag=True,
    help="Also delete cancelled events created longer ago than --older-than.",
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
@dsn_option()
@schema_option
def prune_cmd(
    older_than: str,
    include_dead: bool,
    include_discarded: bool,
    include_cancelled: bool,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Delete old processed events in small batches (never holds long locks)."""
    age = dt.timedelta(seconds=parse_duration(older_than))
    states = (
        ["done"]
        + ["dead"] * include_dead
        + ["discarded"] * include_discarded
        + ["cancelled"] * include_cancelled
    )
    what = ", ".join(states[:-1]) + (" and " if len(states) > 1 else "") + states[-1]
    kinds = {
        "include_dead": include_dead,
        "include_discarded": include_discarded,
        "include_cancelled": include_cancelled,
    }

    async def body(conn: asyncpg.Connection) -> None:
        total = await count_prunable(conn, age, schema=schema, **kinds)
        message = f"{total} {what} event(s) older than {older_than} to delete"
        if not preview(
            message, total, dry_run=dry_run, yes=yes, question=f"delete {total} event(s)?"
        ):
            return
        with progress("deleted", total) as update:
            deleted = await prune(
                conn, age, batch_size=batch_size, schema=schema, progress=update, **kinds
            )
        click.echo(f"deleted {deleted} event(s)")

    run(dsn, schema, body)
