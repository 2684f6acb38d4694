"""Commands that steer events after the fact: retry, discard (dead events), replay (done ones)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import click

from .._steer import Progress, count_dead, discard, preview_replay, replay, retry
from .common import echo_err
from .selection import selection_options, take_selection, touch_selected


def _dead_command(name: str, verb: str) -> Callable[..., None]:
    """The body shared by retry and discard: filters -> count -> confirm -> batches."""
    action = {"retry": retry, "discard": discard}[name]

    def command(
        event_type: str | None, handler: str | None, all_dead: bool, **options: Any
    ) -> None:
        chosen = take_selection(options, event_type=event_type)
        if not (chosen.given or handler or all_dead):
            raise click.UsageError(
                f"say which dead events to {name}: --id, --ids, --type, --handler, --queue, "
                "--ordering-key, --since, --until or --all"
            )
        filters = {**chosen.filters, "handler": handler, "schema": options["schema"]}
        what = "dead event(s)" + (f" with dead handler {handler}" if handler else "")

        async def count(conn: asyncpg.Connection) -> tuple[int, str]:
            total = await count_dead(conn, **filters)
            return total, f"{total} {what} to {name}"

        async def apply(conn: asyncpg.Connection, batch_size: int, update: Progress) -> str:
            done = await action(conn, batch_size=batch_size, progress=update, **filters)
            return f"{len(done)} {what} {verb}"

        # Events named one by one with --id need no question for retry (its behaviour before
        # there were filters); any filter or range may reach more than the operator pictured.
        named = name == "retry" and chosen.named and not handler
        touch_selected(name, verb, options, count, apply, ask=all_dead or not named)

    return command


def _dead_options(name: str, handler_help: str) -> Callable[[Callable[..., Any]], Any]:
    def decorate(fn: Callable[..., Any]) -> Any:
        fn = selection_options(fn)
        for option in reversed(
            [
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
        "succeeded stay done. Retrying the event that holds back an ordering key releases the "
        "key. Says how many first and asks (except for events named with --id)."
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
def replay_cmd(event_type: str, handler: str | None, **options: Any) -> None:
    """Deliver processed (done) events again, to every handler or to one.

    Only done events processed before the replay started are replayed; pending, running, dead
    and discarded ones are counted as skipped. The pgqueue.once ledger rows of the replayed
    (event, handler) pairs are deleted, so once() lets the effect happen again. Interrupted
    and run again with the same options, it resumes where it stopped.
    """
    filters = take_selection(options, event_type=None).filters
    filters.pop("event_type")
    filters.update(handler=handler, schema=options["schema"])
    target = f"handler {handler}" if handler else "every handler"

    async def count(conn: asyncpg.Connection) -> tuple[int, str]:
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
        return plan.to_replay, message

    async def apply(conn: asyncpg.Connection, batch_size: int, update: Progress) -> str:
        result = await replay(conn, event_type, batch_size=batch_size, progress=update, **filters)
        return f"replay #{result.id}: {result.replayed} event(s) replayed to {target}"

    try:
        touch_selected("replay", "replayed", options, count, apply, ask=True)
    except KeyboardInterrupt:
        # Every committed batch is recorded with the replay; nothing is lost or doubled.
        echo_err("replay interrupted; run the same command again to resume it")
        raise
