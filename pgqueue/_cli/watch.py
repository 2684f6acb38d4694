"""``pgqueue status --watch``: a live view that refreshes until Ctrl-C.

On a terminal each refresh redraws the screen in place; otherwise (a pipe, a log file) each
refresh appends a block, so the output stays a readable record. SIGINT and SIGTERM stop it
after the current refresh, with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import asyncpg
import click

from .._errors import DatabaseUnavailableError
from .._inspect import LiveStatus, live_status
from .._parse import format_age
from .._pauses import QueuePause
from .._settings import mask_dsn
from .common import by_backlog, database, more_lines, table_lines, with_conn

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: what watch(1) does
BLOCK_HEADER = "pgqueue status at"
# The connection broke under us (server restart, terminated backend, network): one line,
# not a traceback.
LOST = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)


def watch_status(dsn: str | None, schema: str, interval: float, top: int | None = None) -> None:
    """Refresh a live status every ``interval`` seconds until SIGINT / SIGTERM; each refresh
    shows the ``top`` event types by backlog (None: all)."""
    asyncio.run(_watch(dsn, schema, interval, sys.stdout.isatty(), top))


async def _watch(dsn: str | None, schema: str, interval: float, tty: bool, top: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with database(dsn, embedded_ok=False) as real_dsn:

        async def refresh(conn: asyncpg.Connection) -> None:
            due = loop.time()
            while not stop.is_set():
                try:
                    snapshot = await live_status(conn, window=interval, schema=schema)
                except LOST as exc:
                    raise DatabaseUnavailableError(
                        f"lost the connection to {mask_dsn(real_dsn)} while watching: "
                        f"{exc or type(exc).__name__}; run the command again once it is back"
                    ) from exc
                text = "\n".join(render(snapshot, interval, top))
                click.echo(CLEAR + text if tty else text + "\n")
                # A fixed cadence (not interval + query time), so the blocks stay `interval`
                # apart, as the throughput window assumes.
                due = max(due + interval, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), due - loop.time())

        await with_conn(real_dsn, schema, refresh)


def render(snapshot: LiveStatus, interval: float, top: int | None = None) -> list[str]:
    """One refresh as lines of text: the ``top`` event types by backlog (None: all), and the
    handler states of those types."""
    window = f"{interval:g}s"
    lines = [
        f"{BLOCK_HEADER} {snapshot.db_now:%Y-%m-%d %H:%M:%S %Z} (every {window}; Ctrl-C stops)",
        f"throughput: {snapshot.throughput:.1f} events/s done over the last {window}; "
        f"oldest ready event waiting: {format_age(snapshot.oldest_ready_age)}",
        "",
    ]
    if not snapshot.types:
        return [*lines, "no pending, running or dead events, none done in the window"]
    types = {t.event_type: t for t in snapshot.types}
    backlog = {t.event_type: t.pending + t.running + t.dead for t in snapshot.types}
    shown = [t for _, t in by_backlog(types, backlog, top)]
    rows = [
        ["event type", "pending", "running", "dead", "cancelled", f"done/{window}", "oldest ready"]
    ]
    rows += [
        [
            t.event_type,
            str(t.pending),
            str(t.running),
            str(t.dead),
            str(t.cancelled),
            str(t.done_recently),
            format_age(t.oldest_ready_age),
        ]
        for t in shown
    ]
    lines += table_lines(rows, right=range(1, len(rows[0])))
    lines += more_lines(len(types) - len(shown), "event type")
    names = {t.event_type for t in shown}
    handlers = [h for h in snapshot.handlers if h.event_type in names]
    if handlers:
        states = ["pending", "done", "dead"]
        counts = {(h.event_type, h.handler, h.state.value): h.events for h in handlers}
        pairs = sorted({(h.event_type, h.handler) for h in handlers})
        table = [["event type", "handler", *states]]
        table += [[t, h, *(str(counts.get((t, h, s), 0)) for s in states)] for t, h in pairs]
        lines += ["", "handlers of unfinished events:", *table_lines(table, right={2, 3, 4})]
    return lines + pause_lines(snapshot.paused)


def pause_lines(pauses: list[QueuePause]) -> list[str]:
    """The paused queues, with who paused them, since when and why (no line when none)."""
    if not pauses:
        return []
    rows = [["paused queue", "since", "by", "reason"]]
    rows += [
        [p.queue, p.paused_at.isoformat(timespec="seconds"), p.paused_by, p.reason or ""]
        for p in pauses
    ]
    return [
        "",
        *table_lines(rows, right=range(1, 4)),
        "workers do not claim from paused queues; 'pgqueue resume QUEUE' resumes one",
    ]
