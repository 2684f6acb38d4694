"""``pgqueue limits``: show per-handler concurrency limits, override them at runtime."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from ._cli_common import cli, database, dsn_option, print_table, schema_option, with_conn
from ._limits import HandlerLimit, list_limits, override_limit

MAX_N = 2**31 - 1  # handler_limits.override is an integer


def _parse_set(values: tuple[str, ...]) -> list[tuple[str, int]]:
    pairs = []
    for value in values:
        handler, sep, number = value.rpartition("=")
        # Length first: int() of over 4,300 digits raises; the column is an integer.
        fits = number.isdigit() and len(number.lstrip("0")) <= 10 and 1 <= int(number) <= MAX_N
        if not sep or not handler or not fits:
            raise click.BadParameter(
                f"{value[:60]!r} is not HANDLER=N with 1 <= N <= {MAX_N}, e.g. --set crm=3",
                param_hint="--set",
            )
        pairs.append((handler, int(number)))
    return pairs


@cli.command("limits")
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="HANDLER=N",
    help="Override HANDLER's limit with N (repeat for several). Wins over the registry's value "
    "until --reset; new runs see it at once, runs in progress finish.",
)
@click.option(
    "--reset",
    multiple=True,
    metavar="HANDLER",
    help="Drop the override: back to the value in the code (repeat for several).",
)
@dsn_option()
@schema_option
def limits_cmd(set_: tuple[str, ...], reset: tuple[str, ...], dsn: str | None, schema: str) -> None:
    """Show the concurrency limit of every limited handler (registry value, override, limit
    in force, runs holding a slot now); with --set / --reset, change overrides first."""
    changes = [*_parse_set(set_), *((h, None) for h in reset)]

    async def apply(conn: asyncpg.Connection) -> list[HandlerLimit]:
        async with conn.transaction():  # all or nothing
            for handler, value in changes:
                await override_limit(conn, handler, value, schema)
        return await list_limits(conn, schema)

    async def main() -> list[HandlerLimit]:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, apply)

    limits = asyncio.run(main())
    if not limits:
        click.echo("no handler has a concurrency limit (register one with concurrency=N)")
        return

    def show(value: int | None) -> str:
        return "-" if value is None else str(value)

    print_table(
        [
            ["handler", "registry", "override", "limit", "running"],
            *(
                [h.handler, show(h.registry), show(h.override), show(h.limit), str(h.running)]
                for h in limits
            ),
        ]
    )
