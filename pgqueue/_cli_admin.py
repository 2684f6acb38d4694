"""Commands that inspect and steer the outbox: migrate, roles, enqueue, status, retry, prune."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import asyncpg
import click

from ._api import count_prunable, enqueue, prune, retry, status
from ._cli_common import (
    cli,
    confirm,
    database,
    dsn_option,
    parse_duration,
    parse_run_at,
    print_table,
    schema_option,
    with_conn,
)
from ._db import connect
from ._migrate import check_schema, latest_version, migrate, roles_sql
from ._queries import database_now
from ._settings import mask_dsn, validate_schema


@cli.command("migrate")
@dsn_option()
@schema_option
def migrate_cmd(dsn: str | None, schema: str) -> None:
    """Create or upgrade the pgqueue tables (safe to run again, and from two places at once)."""
    validate_schema(schema)

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


@cli.command("roles")
@schema_option
def roles_cmd(schema: str) -> None:
    """Print the SQL that creates the producer, worker and ops roles (pipe it to psql)."""
    click.echo(roles_sql(validate_schema(schema)), nl=False)


@cli.command("enqueue")
@click.argument("event_type")
@click.argument("payload_json", default="{}")
@click.option("--run-at", type=str, default=None, help="ISO 8601 time with zone to run at.")
@click.option("--delay", type=str, default=None, help="Run after a delay, e.g. 30s, 10m, 2h.")
@click.option("--key", default=None, help="Idempotency key: a second enqueue is a no-op.")
@click.option("--queue", default="default", show_default=True, help="Queue to write to.")
@click.option(
    "--priority",
    type=click.IntRange(-32768, 32767),
    default=0,
    show_default=True,
    help="Of the ready events in a queue, higher priorities are claimed first.",
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
            schema=schema,
        )

    async def main() -> int:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, write)

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
@dsn_option()
@schema_option
def status_cmd(dsn: str | None, schema: str) -> None:
    """Show events per type and state, the oldest ready age, and dead handlers."""
    validate_schema(schema)

    async def main() -> Any:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, lambda c: status(c, schema=schema))

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
        print_table(table)
    if report.dead_handlers:
        click.echo("")
        print_table(
            [
                ["event type", "dead handler", "events"],
                *([t, h, str(n)] for t, h, n in report.dead_handlers),
            ]
        )


@cli.command("retry")
@click.option("--id", "ids", type=int, multiple=True, help="Event id (repeat for several).")
@click.option("--type", "event_type", default=None, help="Only events of this type.")
@click.option("--handler", default=None, help="Only this dead handler (others stay dead).")
@click.option("--all", "all_dead", is_flag=True, help="Every dead event.")
@dsn_option()
@schema_option
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
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(
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
@dsn_option()
@schema_option
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
    age = dt.timedelta(seconds=parse_duration(older_than))
    what = "done" + (" and dead" if include_dead else "")

    async def main() -> None:
        async with database(dsn, embedded_ok=False) as real_dsn:
            conn = await connect(real_dsn)
            try:
                await check_schema(conn, schema, dsn_hint=mask_dsn(real_dsn))
                total = await count_prunable(conn, age, include_dead=include_dead, schema=schema)
                click.echo(f"{total} {what} event(s) older than {older_than} to delete")
                if dry_run or total == 0:
                    return
                confirm(yes, f"delete {total} event(s)?")
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
