"""``pgqueue workers``: the worker processes alive now."""

from __future__ import annotations

import asyncio

import click

from .._parse import format_age
from .._worker.presence import WorkerInfo, list_workers
from .common import (
    database,
    dsn_option,
    print_table,
    schema_option,
    with_conn,
)


@click.command("workers")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per worker (JSON Lines).")
@dsn_option()
@schema_option
def workers_cmd(as_json: bool, dsn: str | None, schema: str) -> None:
    """List the worker processes alive now: host, pid, version, queues, start, last heartbeat
    and events in flight. A worker killed without stopping drops off once its lease expires."""

    async def main() -> list[WorkerInfo]:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, lambda c: list_workers(c, schema=schema))

    workers = asyncio.run(main())
    if as_json:
        for worker in workers:
            click.echo(worker.model_dump_json())
        return
    if not workers:
        click.echo("no worker alive (start one with: pgqueue worker --handlers module:registry)")
        return
    rows = [["worker", "host", "pid", "version", "queues", "started", "heartbeat", "in flight"]]
    for w in workers:
        rows.append(
            [
                w.worker_id,
                w.host,
                str(w.pid),
                w.version,
                ",".join(w.queues),
                f"{format_age((w.db_now - w.started_at).total_seconds())} ago",
                f"{format_age((w.db_now - w.heartbeat_at).total_seconds())} ago",
                str(w.in_flight),
            ]
        )
    print_table(rows)
