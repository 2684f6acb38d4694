"""Helpers for tests: wait on a condition, run the CLI in a child process.

Import them as ``from tests.helpers import run_cli, wait_for`` (pyproject puts the project
root on pytest's ``pythonpath``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

# -c rather than ``-m pgqueue._cli.main`` (runs the module a second time as __main__) or the
# ``pgqueue`` console script (may be missing or stale on PATH).
_CLI = "from pgqueue._cli.main import main; main()"


async def wait_for(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> None:
    """Poll ``await predicate()`` until it is true; AssertionError after ``timeout`` seconds.

    Use it instead of sleeping and hoping: ``await wait_for(lambda: is_done(conn, id),
    message="event 1 never reached done")``. The predicate is checked once more at the
    deadline, so a slow last check still counts.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await predicate():
            return
        if loop.time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pgqueue *args`` in a child Python and return the finished process.

    ``env`` entries are added to (override) the current environment; stdout and stderr are
    captured as text; ``input`` is fed to stdin (stdin is empty otherwise). Does not check
    the exit code: assert on ``result.returncode`` yourself. Raises
    subprocess.TimeoutExpired after ``timeout`` seconds (the child is killed).
    """
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        env={**os.environ, **(env or {})},
        input=input if input is not None else "",
        timeout=timeout,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def count_is(conn: Any, expected: Any, sql: str, *args: Any) -> Callable[[], Awaitable[bool]]:
    """A :func:`wait_for` predicate: ``sql``'s single value equals ``expected``."""

    async def check() -> bool:
        return bool(await conn.fetchval(sql, *args) == expected)

    return check
