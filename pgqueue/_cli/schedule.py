"""``pgqueue schedules``: the periodic events the workers emit, with their last and next tick."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import click

from .._errors import ConfigurationError
from .._queries import queries_for
from .._schedule import schedule_status
from .common import database, dsn_option, print_table, schema_option, with_conn


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _row(r: Any) -> list[str]:
    """One table row: name, expression, zone, event type, last tick, next tick, state."""
    status = schedule_status(r)
    if not status.valid:
        state = "invalid definition"
    else:
        state = "late: no worker serves it?" if status.late else "ok"
    return [
        status.name,
        status.expression,
        status.timezone,
        status.event_type,
        _when(status.last_tick),
        _when(status.next_tick),
        _when(status.synced_at),
        state,
    ]


@click.command("schedules")
@click.option(
    "--delete",
    "delete_name",
    default=None,
    metavar="NAME",
    help="Forget schedule NAME (removed from code; a worker that still has it recreates it).",
)
@dsn_option()
@schema_option
def schedules_cmd(delete_name: str | None, dsn: str | None, schema: str) -> None:
    """List periodic events: expression, last tick emitted, next tick (times in UTC).

    Schedules are registered by the workers that serve them (registry.schedule /
    @registry.periodic). One removed from code keeps its row, shown as late once a tick is
    overdue; --delete forgets it.
    """
    queries = queries_for(schema).schedule

    async def main() -> Any:
        async with database(dsn, embedded_ok=False) as real_dsn:
            if delete_name is not None:
                return await with_conn(
                    real_dsn, schema, lambda c: queries.delete_schedule(c, delete_name)
                )
            return await with_conn(real_dsn, schema, queries.list_schedules)

    result = asyncio.run(main())
    if delete_name is not None:
        if not result:
            raise ConfigurationError(
                f"no schedule named {delete_name!r}; 'pgqueue schedules' lists them"
            )
        click.echo(f"schedule {delete_name} deleted")
        return
    if not result:
        click.echo("no schedules (register one with registry.schedule or @registry.periodic)")
        return
    header = ["name", "expression", "zone", "event type", "last tick", "next tick", "registered"]
    print_table([[*header, "state"], *(_row(r) for r in result)])
