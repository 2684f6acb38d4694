"""Commands of flow control: cancel events, wait for one, pause and resume queues."""

from __future__ import annotations

import datetime as dt
import getpass
from typing import Any

import asyncpg
import click

from .._cancel import cancel, count_cancellable, reschedule
from .._errors import WaitTimeout
from .._models import EventState
from .._parse import parse_duration, parse_run_at
from .._pauses import pause_queue, resume_queue
from .._steer import MAX_ID, Progress
from .._wait import DEFAULT_POLL_MAX, POLL_MIN, WaitResult, wait
from .common import dsn_option, echo_err, schema_option
from .progress import run
from .selection import selection_options, take_selection, touch_selected

# `pgqueue wait` exit codes, one per final state (and one for the timeout, as timeout(1)).
WAIT_EXIT = {
    EventState.DONE: 0,
    EventState.DEAD: 3,
    EventState.DISCARDED: 4,
    EventState.CANCELLED: 5,
}
WAIT_TIMEOUT_EXIT = 124


def operator() -> str:
    """Who runs this command, for the reasons kept with cancelled events and pauses."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


@click.command("cancel")
@click.option("--type", "event_type", default=None, help="Only events of this type.")
@click.option(
    "--reason",
    default=None,
    help="Why, kept as the events' last error [default: cancelled by <user> with pgqueue cancel].",
)
@selection_options
def cancel_cmd(event_type: str | None, reason: str | None, **options: Any) -> None:
    """Cancel pending and running events: final state 'cancelled', never run (again).

    Select by --id/--ids, --type, --queue, --ordering-key and creation time (--since/--until
    take a time or an age: '--until 2h' = created more than 2 hours ago); every given filter
    must match. A running event's handlers are cancelled at its worker's next heartbeat and
    recorded as cancelled, not failed. Cancelled events are kept for audit ('prune
    --cancelled' deletes them). Says how many first and asks (except for events named with
    --id alone).
    """
    chosen = take_selection(options, event_type=event_type)
    if not chosen.given:
        raise click.UsageError(
            "say which events to cancel: --id, --ids, --type, --queue, --ordering-key, --since "
            "or --until"
        )
    filters = {**chosen.filters, "schema": options["schema"]}
    text = reason if reason is not None else f"cancelled by {operator()} with pgqueue cancel"

    async def count(conn: asyncpg.Connection) -> tuple[int, str]:
        found = await count_cancellable(conn, **filters)
        return found.total, (
            f"{found.total} event(s) to cancel ({found.pending} pending, {found.running} running)"
        )

    async def apply(conn: asyncpg.Connection, batch_size: int, update: Progress) -> str:
        done = await cancel(conn, reason=text, batch_size=batch_size, progress=update, **filters)
        return f"{len(done)} event(s) cancelled"

    touch_selected("cancel", "cancelled", options, count, apply, ask=not chosen.named)


@click.command(
    "wait",
    epilog=(
        "Exit codes: 0 done, 3 dead, 4 discarded, 5 cancelled, 124 still pending or running "
        "at --timeout, 1 no such event (or another error), 2 bad usage."
    ),
)
@click.argument("event_id", type=click.IntRange(1, MAX_ID), metavar="ID")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 365 * 86400),
    default=None,
    help="Give up after this many seconds (exit 124) [default: wait for ever].",
)
@click.option(
    "--poll-max",
    type=click.FloatRange(POLL_MIN, 3600),
    default=DEFAULT_POLL_MAX,
    show_default=True,
    help="Longest pause between two looks at the event, in seconds (polls start at 0.05 s).",
)
@dsn_option()
@schema_option
def wait_cmd(
    event_id: int, timeout: float | None, poll_max: float, dsn: str | None, schema: str
) -> None:
    """Wait until event ID is done, dead, discarded or cancelled; exit with a code per state.

    Prints the final state (and the last error, if any). Polls the event with a growing
    interval, outside any transaction; costs nothing while nobody waits.
    """

    async def body(conn: asyncpg.Connection) -> WaitResult:
        return await wait(conn, event_id, timeout=timeout, poll_max=poll_max, schema=schema)

    try:
        result: WaitResult = run(dsn, schema, body)
    except WaitTimeout as exc:
        echo_err(str(exc))
        raise SystemExit(WAIT_TIMEOUT_EXIT) from None
    line = f"event {result.event_id}: {result.state.value}"
    if result.state is not EventState.DONE and result.last_error:
        line += f" ({result.last_error})"
    click.echo(line)
    if WAIT_EXIT[result.state]:
        raise SystemExit(WAIT_EXIT[result.state])


@click.command("reschedule")
@click.argument(
    "event_ids", type=click.IntRange(1, MAX_ID), nargs=-1, required=True, metavar="ID..."
)
@click.option("--run-at", default=None, help="New due time, ISO 8601 with zone (past = now).")
@click.option("--delay", default=None, help="Due this long from now, e.g. 0s, 10m, 2h.")
@dsn_option()
@schema_option
def reschedule_cmd(
    event_ids: tuple[int, ...],
    run_at: str | None,
    delay: str | None,
    dsn: str | None,
    schema: str,
) -> None:
    """Move pending events to a new due time (--run-at or --delay; '--delay 0s' = now).

    Running, done, dead, discarded and cancelled events are left alone and not counted.
    Workers see the new time within their poll interval.
    """
    if (run_at is None) == (delay is None):
        raise click.UsageError("give --run-at or --delay (one of them)")
    when: dt.datetime | dt.timedelta = (
        parse_run_at(run_at)
        if run_at is not None
        else dt.timedelta(seconds=parse_duration(delay or "0"))
    )

    async def body(conn: asyncpg.Connection) -> list[int]:
        return await reschedule(conn, list(event_ids), when, schema=schema)

    moved = run(dsn, schema, body)
    click.echo(f"{len(moved)} pending event(s) rescheduled")
    if len(moved) < len(set(event_ids)):
        skipped = sorted(set(event_ids) - set(moved))
        shown = ", ".join(str(i) for i in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        click.echo(f"not pending (left alone): {shown}")


@click.command("pause")
@click.argument("queue")
@click.option("--reason", default=None, help="Why, shown by 'pgqueue status'.")
@dsn_option()
@schema_option
def pause_cmd(queue: str, reason: str | None, dsn: str | None, schema: str) -> None:
    """Pause QUEUE: workers stop claiming from it within their poll interval.

    Events already running finish; producers keep enqueueing (the events wait as pending).
    'pgqueue status' lists paused queues; 'pgqueue resume QUEUE' resumes one.
    """

    async def body(conn: asyncpg.Connection) -> bool:
        return await pause_queue(conn, queue, who=operator(), reason=reason, schema=schema)

    if run(dsn, schema, body):
        click.echo(f"queue {queue} paused")
    else:
        click.echo(f"queue {queue} was already paused")


@click.command("resume")
@click.argument("queue")
@dsn_option()
@schema_option
def resume_cmd(queue: str, dsn: str | None, schema: str) -> None:
    """Resume QUEUE: its workers claim from it again within their poll interval."""

    async def body(conn: asyncpg.Connection) -> bool:
        return await resume_queue(conn, queue, schema=schema)

    if run(dsn, schema, body):
        click.echo(f"queue {queue} resumed")
    else:
        click.echo(f"queue {queue} was not paused")
