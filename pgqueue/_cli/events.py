"""``pgqueue events list`` and ``pgqueue events show``: read events without touching them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import click

from .._inspect import (
    BlockedKey,
    EventDetail,
    EventPage,
    EventSummary,
    TimeBound,
    blocked_keys,
    get_event,
    list_events,
)
from .._models import EventState, HandlerState
from .._names import MAX_EVENT_ID
from .._parse import format_age, parse_time_bound
from .._settings import validate_queue
from .common import (
    database,
    dsn_option,
    print_table,
    schema_option,
    table_lines,
    with_conn,
)

ERROR_WIDTH = 60


def _time_bound(ctx: click.Context, param: click.Parameter, value: str | None) -> TimeBound | None:
    return parse_time_bound(value) if value else None


@click.group("events")
def events_group() -> None:
    """List and show events (read only)."""


@events_group.command("list")
@click.option(
    "--type", "event_types", metavar="TYPE", multiple=True, help="Event type (repeat for several)."
)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in EventState]),
    help="Event state (repeat for several).",
)
@click.option(
    "--handler",
    metavar="NAME",
    default=None,
    help="Only events with a per-handler record for this handler (events that succeeded "
    "at the first try keep none).",
)
@click.option(
    "--handler-state",
    type=click.Choice([s.value for s in HandlerState]),
    default=None,
    help="Only events whose --handler (without it: any handler) is in this state.",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    callback=_time_bound,
    help="Created at or after: 10m / 2h / 3d (that long ago) or an ISO time with zone.",
)
@click.option(
    "--until",
    metavar="WHEN",
    default=None,
    callback=_time_bound,
    help="Created before: 10m / 2h / 3d (that long ago) or an ISO time with zone.",
)
@click.option("--key", metavar="KEY", default=None, help="Idempotency key.")
@click.option(
    "--queue", "queues", metavar="NAME", multiple=True, help="Queue (repeat for several)."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Events per page, newest first.",
)
@click.option(
    "--before-id",
    metavar="ID",
    type=click.IntRange(1, MAX_EVENT_ID),
    default=None,
    help="Only events with a smaller id: the next (older) page.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line (JSON Lines; jq reads it as is). No payloads.",
)
@click.option(
    "--blocked",
    is_flag=True,
    help="List the held-back ordering keys instead (a dead or retrying event holds each "
    "back; up to --limit), with the event holding each one. Other filters do not apply.",
)
@dsn_option()
@schema_option
def list_cmd(
    event_types: tuple[str, ...],
    states: tuple[str, ...],
    handler: str | None,
    handler_state: str | None,
    since: TimeBound | None,
    until: TimeBound | None,
    key: str | None,
    queues: tuple[str, ...],
    limit: int,
    before_id: int | None,
    as_json: bool,
    blocked: bool,
    dsn: str | None,
    schema: str,
) -> None:
    """List events newest first, without their payloads (use 'events show ID' for one).

    All filters combine (AND). To walk every event, pass the id of the last one listed as
    --before-id until nothing is left; the table says the next --before-id on stderr.
    """
    if blocked:
        _list_blocked(limit, as_json, dsn, schema)
        return
    for queue in queues:
        validate_queue(queue)
    filters: dict[str, Any] = dict(
        event_types=event_types,
        states=states,
        handler=handler,
        handler_state=handler_state,
        since=since,
        until=until,
        idempotency_key=key,
        queues=queues,
        before_id=before_id,
        limit=limit,
        schema=schema,
    )

    async def main() -> EventPage:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, lambda c: list_events(c, **filters))

    page = asyncio.run(main())
    if as_json:
        for event in page.events:
            click.echo(event.model_dump_json())
        return
    _print_page(page)


def _list_blocked(limit: int, as_json: bool, dsn: str | None, schema: str) -> None:
    async def main() -> list[BlockedKey]:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(
                real_dsn, schema, lambda c: blocked_keys(c, limit=limit, schema=schema)
            )

    keys = asyncio.run(main())
    if as_json:
        for key in keys:
            click.echo(key.model_dump_json())
    elif not keys:
        click.echo("no ordering key is held back")
    else:
        print_held_back(keys, more=len(keys) >= limit)


def print_held_back(keys: list[BlockedKey], more: bool = False) -> None:
    """The held-back ordering keys: the event holding each back, and how many wait behind
    it (``more``: the list was cut; a last line says where to see them all)."""
    click.echo(f"held-back keys: {len(keys)}{'+' if more else ''}")
    rows = [["ordering key", "held by event", "state", "waiting", "last error"]]
    for k in keys:
        error = " ".join((k.last_error or "-").split())
        rows.append(
            [k.ordering_key, str(k.event_id), k.state.value, str(k.waiting), error[:ERROR_WIDTH]]
        )
    print_table(rows)
    click.echo("release a key: pgqueue retry --id EVENT, or pgqueue discard --id EVENT")
    if more:
        click.echo("all of them: pgqueue events list --blocked")


def _print_page(page: EventPage) -> None:
    if not page.events:
        click.echo("no events match")
        return
    rows = [["id", "type", "queue", "state", "attempt", "created", "run_at", "last error"]]
    rows += [_list_row(e, page.db_now) for e in page.events]
    for line in table_lines(rows, right={0, 4}):
        click.echo(line)
    if page.next_before_id is not None:
        click.echo(f"more: add --before-id {page.next_before_id} for the next page", err=True)


def _list_row(event: EventSummary, now: dt.datetime) -> list[str]:
    error = " ".join((event.last_error or "").split())  # one line, whatever the handler raised
    if len(error) > ERROR_WIDTH:
        error = error[: ERROR_WIDTH - 3] + "..."
    return [
        str(event.id),
        event.event_type,
        event.queue,
        event.state.value,
        str(event.attempt),
        _relative(event.created_at, now),
        _relative(event.run_at, now),
        error or "-",
    ]


def _relative(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    return f"{format_age(seconds)} ago" if seconds >= 0 else f"in {format_age(-seconds)}"


@events_group.command("show")
@click.argument("event_id", metavar="ID", type=click.IntRange(1, MAX_EVENT_ID))
@click.option("--json", "as_json", is_flag=True, help="One JSON object, payload included.")
@dsn_option()
@schema_option
def show_cmd(event_id: int, as_json: bool, dsn: str | None, schema: str) -> None:
    """Show one event: payload, per-handler records, times, lease and idempotency key."""

    async def main() -> EventDetail | None:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(
                real_dsn, schema, lambda c: get_event(c, event_id, schema=schema)
            )

    event = asyncio.run(main())
    if event is None:
        raise click.ClickException(
            f"no event {event_id} in schema {schema} (pruned, or never there); "
            "find events with 'pgqueue events list'"
        )
    if as_json:
        click.echo(event.model_dump_json(indent=2))
        return
    _print_detail(event)


def _print_detail(event: EventDetail) -> None:
    now = event.db_now
    fields = [
        ("event", f"{event.id}  {event.event_type}  (queue {event.queue})"),
        ("state", f"{event.state.value}, attempt {event.attempt}"),
        ("created_at", _when(event.created_at, now)),
        ("run_at", _when(event.run_at, now)),
        ("processed_at", _when(event.processed_at, now)),
        ("lease", _lease(event, now)),
        ("idempotency key", event.idempotency_key or "-"),
        ("last error", event.last_error or "-"),
        ("effects recorded", ", ".join(event.effects) or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {value}")
    click.echo("handlers:")
    for line in _handler_lines(event):
        click.echo(f"  {line}")
    if event.payload is None:
        click.echo(f"payload (raw): {event.payload_note}")
        click.echo(f"  {event.payload_text}")
        return
    click.echo("payload:")
    for line in json.dumps(event.payload, indent=2, ensure_ascii=False).splitlines():
        click.echo(f"  {line}")


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    return "-" if value is None else f"{value.isoformat()}  ({_relative(value, now)})"


def _lease(event: EventDetail, now: dt.datetime) -> str:
    if event.lease_token is None:
        return "-"
    expires = _relative(event.lease_expires_at, now)
    verb = "expired" if expires.endswith("ago") else "expires"
    return f"held by {event.leased_by or '?'}, {verb} {expires} (token {event.lease_token})"


def _handler_lines(event: EventDetail) -> list[str]:
    if not event.handler_records:
        if event.state is EventState.DONE:
            return ["none: every handler succeeded at its first attempt"]
        return ["none yet (a record is written once a handler fails or its siblings do)"]
    rows = [["handler", "state", "attempts", "not before", "updated", "error"]]
    for h in event.handler_records:
        rows.append(
            [
                h.name,
                h.state.value,
                str(h.attempts),
                _relative(h.not_before, event.db_now),
                _relative(h.updated_at, event.db_now),
                " ".join((h.error or "-").split()),
            ]
        )
    return table_lines(rows, right={2})
