"""``pgqueue limits``: show per-handler concurrency and rate limits, override them at
runtime."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from .._names import RATE_RULE, rate_problem
from .._worker.limits import HandlerLimit, list_limits, override_limit
from .._worker.rates import override_rate
from .common import database, dsn_option, print_table, schema_option, with_conn

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


def _parse_rates(values: tuple[str, ...]) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for value in values:
        handler, sep, rate = value.partition("=")
        if not sep or not handler or rate_problem(rate) is not None:
            raise click.BadParameter(
                f"{value[:60]!r} is not HANDLER=RATE with RATE {RATE_RULE}, e.g. --rate sms=100/s",
                param_hint="--rate",
            )
        pairs.append((handler, rate))
    return pairs


@click.command("limits")
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
@click.option(
    "--rate",
    "rate_",
    multiple=True,
    metavar="HANDLER=N/s",
    help="Override HANDLER's rate limit (N/s, N/m or N/h; repeat for several). Wins over the "
    "registry's rate until --reset-rate; every worker's next token take sees it.",
)
@click.option(
    "--reset-rate",
    multiple=True,
    metavar="HANDLER",
    help="Drop the rate override: back to the rate in the code (repeat for several).",
)
@dsn_option()
@schema_option
def limits_cmd(
    set_: tuple[str, ...],
    reset: tuple[str, ...],
    rate_: tuple[str, ...],
    reset_rate: tuple[str, ...],
    dsn: str | None,
    schema: str,
) -> None:
    """Show the concurrency and rate limits of every limited handler (registry value,
    override, limit in force, runs holding a slot now); with --set / --reset / --rate /
    --reset-rate, change overrides first."""
    changes = [*_parse_set(set_), *((h, None) for h in reset)]
    rates = [*_parse_rates(rate_), *((h, None) for h in reset_rate)]

    async def apply(conn: asyncpg.Connection) -> list[HandlerLimit]:
        async with conn.transaction():  # all or nothing
            for handler, value in changes:
                await override_limit(conn, handler, value, schema)
            for handler, rate in rates:
                await override_rate(conn, handler, rate, schema=schema)
        return await list_limits(conn, schema)

    async def main() -> list[HandlerLimit]:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, apply)

    limits = asyncio.run(main())
    if not limits:
        click.echo(
            "no handler has a concurrency or rate limit (register one with concurrency=N "
            "or rate='100/s')"
        )
        return

    def show(value: int | None) -> str:
        return "-" if value is None else str(value)

    def rate(h: HandlerLimit) -> str:
        if h.rate is None:
            return "-"
        shown = h.rate + (" per key" if h.rate_per_key else "")
        return shown + (" (override)" if h.rate_override is not None else "")

    print_table(
        [
            ["handler", "registry", "override", "limit", "running", "rate"],
            *(
                [
                    h.handler,
                    show(h.registry),
                    show(h.override),
                    show(h.limit),
                    str(h.running),
                    rate(h),
                ]
                for h in limits
            ),
        ]
    )
