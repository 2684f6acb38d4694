"""What retry, discard, replay and cancel share: the options that select events, their parsing
into the API's keyword filters, and the one count -> confirm -> batches-with-progress path."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import click

from .._parse import parse_duration, parse_ids, parse_run_at
from .._steer import DEFAULT_BATCH, MAX_ID, Progress, TimeBound
from .common import dsn_option, schema_option
from .progress import preview, progress, run


def parse_bound(text: str | None, option: str) -> TimeBound | None:
    """An ISO 8601 time with zone, or a duration meaning that long ago (2h, 7d)."""
    if text is None:
        return None
    if re.fullmatch(r"\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*", text):
        try:
            return dt.timedelta(seconds=parse_duration(text))
        except OverflowError:
            raise click.BadParameter(
                f"{text!r} is too long ago", param_hint=f"'{option}'"
            ) from None
    try:
        return parse_run_at(text)
    except click.BadParameter:
        raise click.BadParameter(
            f"{text!r} is neither a time with zone (2026-11-01T00:00:00Z) nor an age (2h, 7d)",
            param_hint=f"'{option}'",
        ) from None


def selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--id, --ids, --queue, --ordering-key, --since, --until, --batch-size, --dry-run, --yes,
    --dsn, --schema (each command adds its own --type, and --handler where it has one)."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--id",
            "ids",
            type=click.IntRange(1, MAX_ID),
            multiple=True,
            help="Event id (repeatable).",
        ),
        click.option(
            "--ids",
            "id_texts",
            multiple=True,
            metavar="RANGES",
            help="Event ids and inclusive ranges, e.g. 42 or 100..200,305 (repeatable).",
        ),
        click.option("--queue", default=None, help="Only events of this queue."),
        click.option(
            "--ordering-key",
            default=None,
            help="Only events with this ordering key (all of the key's events).",
        ),
        click.option(
            "--since",
            default=None,
            help="Only events created at or after this: a time with zone or an age (2h, 7d).",
        ),
        click.option(
            "--until",
            default=None,
            help="Only events created before this: a time with zone or an age (2h, 7d).",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 100_000),
            default=DEFAULT_BATCH,
            show_default=True,
            help="Events per statement (each its own short transaction).",
        ),
        click.option("--dry-run", is_flag=True, help="Only say how many events would change."),
        click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts)."),
        dsn_option(),
        schema_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass(frozen=True)
class Selected:
    """The selection options as given: the API's keyword filters and how they were given."""

    filters: dict[str, Any]
    # Only --id named events (no range, no other filter): the operator listed every one.
    named: bool

    @property
    def given(self) -> bool:
        """Whether any filter was given (an empty --type '' or --queue '' is not one; a time
        bound is, even '0s')."""
        bounds = ("since", "until")
        return any(v for k, v in self.filters.items() if k not in bounds) or any(
            self.filters[k] is not None for k in bounds
        )


def take_selection(options: dict[str, Any], *, event_type: str | None) -> Selected:
    """Pop the options of :func:`selection_options` (and ``event_type``) off ``options``;
    what stays is the command's own."""
    ids: tuple[int, ...] = options.pop("ids")
    ranges = parse_ids(options.pop("id_texts"))
    since: str | None = options.pop("since")
    until: str | None = options.pop("until")
    filters: dict[str, Any] = {
        "ids": [*ids, *(ranges or [])] or None,
        "event_type": event_type,
        "queue": options.pop("queue"),
        "ordering_key": options.pop("ordering_key"),
        "since": parse_bound(since, "--since"),
        "until": parse_bound(until, "--until"),
    }
    others = [v for k, v in filters.items() if k != "ids"]
    return Selected(filters, bool(ids) and not ranges and all(v is None for v in others))


Count = Callable[[asyncpg.Connection], Awaitable[tuple[int, str]]]
"""Counts what the command would touch: (events, the line that says so)."""

Apply = Callable[[asyncpg.Connection, int, Progress], Awaitable[str]]
"""Does it, in batches of the given size, reporting progress; returns the closing line."""


def touch_selected(
    name: str, verb: str, options: dict[str, Any], count: Count, apply: Apply, *, ask: bool
) -> None:
    """Count (printed), confirm unless ``ask`` is False or --yes (nothing with --dry-run or
    nothing to do), then apply with progress on stderr and print the closing line.

    ``options`` holds the rest of :func:`selection_options`: batch size, dry run, yes, DSN
    and schema."""
    batch_size: int = options["batch_size"]

    async def body(conn: asyncpg.Connection) -> None:
        total, message = await count(conn)
        if not preview(
            message,
            total,
            dry_run=options["dry_run"],
            yes=options["yes"],
            question=f"{name} {total} event(s)?",
            ask=ask,
        ):
            return
        with progress(verb, total) as update:
            click.echo(await apply(conn, batch_size, update))

    run(options["dsn"], options["schema"], body)
