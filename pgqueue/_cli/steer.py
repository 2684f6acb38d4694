"""Commands that steer events after the fact: retry, discard (dead events), replay (done ones)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import asyncpg
import click

from .._steer import (
    DEFAULT_BATCH,
    MAX_ID,
    IdSpec,
    TimeBound,
    count_dead,
    discard,
    preview_replay,
    replay,
    retry,
)
from .common import dsn_option, echo_err, parse_duration, parse_run_at, schema_option
from .progress import preview, progress, run

_RANGE = re.compile(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?")


def id_number(text: str, option: str) -> int:
    """An event id typed by the user: within 1..2^63-1 (outbox.id is a bigint), checked
    before int() (which refuses over 4,300 digits with a traceback of its own)."""
    digits = text.strip().lstrip("0") or "0"
    if len(digits) > len(str(MAX_ID)) or not 1 <= int(digits) <= MAX_ID:
        raise click.BadParameter(
            f"{text.strip()[:30]!r} is not an event id; ids are between 1 and {MAX_ID}",
            param_hint=option,
        )
    return int(digits)


def parse_ids(texts: tuple[str, ...]) -> list[IdSpec] | None:
    """``--ids 7 --ids 10..20,31`` -> [7, range(10, 21), 31] (ranges inclusive)."""
    if not texts:
        return None
    ids: list[IdSpec] = []
    for part in ",".join(texts).split(","):
        match = _RANGE.fullmatch(part)
        if not match:
            raise click.BadParameter(
                f"{part.strip()!r} is not an id or an id range; use e.g. 42, 100..200 or 1..50,77",
                param_hint="'--ids'",
            )
        low = id_number(match.group(1), "'--ids'")
        high = id_number(match.group(2), "'--ids'") if match.group(2) else None
        if high is not None and high < low:
            raise click.BadParameter(
                f"{part.strip()!r} is an empty range; write the lower id first, e.g. 100..200",
                param_hint="'--ids'",
            )
        ids.append(range(low, high + 1) if high is not None else low)
    return ids


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
    """--ids, --since, --until, --batch-size, --dry-run, --yes, --dsn, --schema."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--ids",
            "id_texts",
            multiple=True,
            metavar="RANGES",
            help="Event ids and inclusive ranges, e.g. 42 or 100..200,305 (repeatable).",
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


def _dead_filters(
    name: str,
    ids: tuple[int, ...],
    id_texts: tuple[str, ...],
    event_type: str | None,
    handler: str | None,
    since: str | None,
    until: str | None,
) -> tuple[dict[str, Any], bool]:
    """The API keyword arguments, and whether the operator named every event with --id."""
    ranges = parse_ids(id_texts)
    filters: dict[str, Any] = {
        "ids": [*ids, *(ranges or [])] or None,
        "event_type": event_type,
        "handler": handler,
        "since": parse_bound(since, "--since"),
        "until": parse_bound(until, "--until"),
    }
    # Events named one by one with --id need no question for retry (its behaviour before
    # there were filters); any filter or range may reach more than the operator pictured.
    named = name == "retry" and bool(ids) and not (ranges or event_type or handler)
    return filters, named and not (since or until)


def _dead_command(name: str, verb: str) -> Callable[..., None]:
    """The body shared by retry and discard: filters -> count -> confirm -> batches."""
    action = {"retry": retry, "discard": discard}[name]

    def command(
        ids: tuple[int, ...],
        id_texts: tuple[str, ...],
        event_type: str | None,
        handler: str | None,
        since: str | None,
        until: str | None,
        all_dead: bool,
        batch_size: int,
        dry_run: bool,
        yes: bool,
        dsn: str | None,
        schema: str,
    ) -> None:
        filters, named = _dead_filters(name, ids, id_texts, event_type, handler, since, until)
        if not (filters["ids"] or event_type or handler or since or until or all_dead):
            raise click.UsageError(
                f"say which dead events to {name}: --id, --ids, --type, --handler, --since, "
                "--until or --all"
            )
        filters["schema"] = schema
        what = "dead event(s)" + (f" with dead handler {handler}" if handler else "")

        async def body(conn: asyncpg.Connection) -> None:
            total = await count_dead(conn, **filters)
            message = f"{total} {what} to {name}"
            ask = all_dead or not named
            if not preview(
                message, total, dry_run=dry_run, yes=yes, question=f"{name} {total}?", ask=ask
            ):
                return
            with progress(verb, total) as update:
                done = await action(conn, batch_size=batch_size, progress=update, **filters)
            click.echo(f"{len(done)} {what} {verb}")

        run(dsn, schema, body)

    return command


def _dead_options(name: str, handler_help: str) -> Callable[[Callable[..., Any]], Any]:
    def decorate(fn: Callable[..., Any]) -> Any:
        fn = selection_options(fn)
        for option in reversed(
            [
                click.option(
                    "--id",
                    "ids",
                    type=click.IntRange(1, MAX_ID),
                    multiple=True,
                    help="Event id (repeatable).",
                ),
                click.option(
                    "--type", "event_type", default=None, help="Only events of this type."
                ),
                click.option("--handler", default=None, help=handler_help),
                click.option(
                    "--all", "all_dead", is_flag=True, help=f"{name.title()} every dead event."
                ),
            ]
        ):
            fn = option(fn)
        return fn

    return decorate


retry_cmd = click.command(
    "retry",
    help=(
        "Send dead events back to pending: only their dead handlers run again; handlers that "
        "succeeded stay done. Says how many first and asks (except for events named with --id)."
    ),
)(
    _dead_options(
        "retry",
        "Only events where this handler is dead, and only it runs again (other dead handlers "
        "stay dead; handlers registered since do not run).",
    )(_dead_command("retry", "sent back to pending"))
)

discard_cmd = click.command(
    "discard",
    help=(
        "Give up on dead events for good: state 'discarded', kept for audit, never run again "
        "(delete them with 'prune --discarded'). Says how many first and asks."
    ),
)(
    _dead_options(
        "discard",
        "Only events where this handler is dead, and only it is discarded (an event with "
        "other dead handlers stays dead for them).",
    )(_dead_command("discard", "discarded"))
)


@click.command("replay")
@click.option("--type", "event_type", required=True, help="Event type to replay (required).")
@click.option(
    "--handler",
    default=None,
    help="Deliver to this handler only (it may be newer than the events); default: every handler.",
)
@selection_options
def replay_cmd(
    event_type: str,
    handler: str | None,
    id_texts: tuple[str, ...],
    since: str | None,
    until: str | None,
    batch_size: int,
    dry_run: bool,
    yes: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """Deliver processed (done) events again, to every handler or to one.

    Only done events processed before the replay started are replayed; pending, running, dead
    and discarded ones are counted as skipped. The pgqueue.once ledger rows of the replayed
    (event, handler) pairs are deleted, so once() lets the effect happen again. Interrupted
    and run again with the same options, it resumes where it stopped.
    """
    filters: dict[str, Any] = {
        "handler": handler,
        "ids": parse_ids(id_texts),
        "since": parse_bound(since, "--since"),
        "until": parse_bound(until, "--until"),
        "schema": schema,
    }
    target = f"handler {handler}" if handler else "every handler"

    async def body(conn: asyncpg.Connection) -> None:
        plan = await preview_replay(conn, event_type, **filters)
        head = (
            f"resuming replay #{plan.id} ({plan.replayed_before} event(s) already replayed): "
            if plan.id is not None
            else ""
        )
        skipped = ", ".join(f"{n} {state}" for state, n in sorted(plan.skipped.items()))
        message = f"{head}{plan.to_replay} done {event_type} event(s) to replay to {target}" + (
            f" (skipped, not done: {skipped})" if skipped else ""
        )
        if not preview(
            message,
            plan.to_replay,
            dry_run=dry_run,
            yes=yes,
            question=f"replay {plan.to_replay} event(s)?",
        ):
            return
        with progress("replayed", plan.to_replay) as update:
            result = await replay(
                conn, event_type, batch_size=batch_size, progress=update, **filters
            )
        click.echo(f"replay #{result.id}: {result.replayed} event(s) replayed to {target}")

    try:
        run(dsn, schema, body)
    except KeyboardInterrupt:
        # Every committed batch is recorded with the replay; nothing is lost or doubled.
        echo_err("replay interrupted; run the same command again to resume it")
        raise
