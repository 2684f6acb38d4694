"""The pattern every command that touches many events follows: say how many, ask, show progress.

The count goes to stdout (scripts read it); the question and the progress go to stderr. On a
terminal the progress is a bar; otherwise (a pipe, a log file, cron) one line per batch, at
most one a second, so a big run neither floods a log nor goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import click

from .common import confirm, database, with_conn

# Seconds between two progress lines when stderr is not a terminal.
LINE_INTERVAL = 1.0


def preview(
    message: str, total: int, *, dry_run: bool, yes: bool, question: str, ask: bool = True
) -> bool:
    """Print ``message``; return True when the command should go on and touch ``total`` events.

    False for a dry run or nothing to do; asks ``question`` unless ``yes`` (or not ``ask``:
    the operator named every event); a refusal raises Abort (exit 130, nothing touched).
    """
    click.echo(message)
    if dry_run or total == 0:
        return False
    if ask:
        confirm(yes, question)
    return True


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``update(done)`` (done so far, cumulative) that shows progress on stderr."""
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            shown = 0

            def update_bar(done: int) -> None:
                nonlocal shown
                bar.update(done - shown)
                shown = done

            yield update_bar
        return
    last = 0.0

    def update_line(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LINE_INTERVAL or done >= total:
            last = now
            click.echo(f"{label} {done}/{total}", err=True)

    yield update_line


def run(dsn: str | None, schema: str, body: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """Run ``body`` on one connection to a checked schema (outside a transaction: each of its
    statements commits on its own)."""

    async def main() -> Any:
        async with database(dsn, embedded_ok=False) as real_dsn:
            return await with_conn(real_dsn, schema, body)

    return asyncio.run(main())
