"""`pgqueue status` with very many event types: the command, and its table building against
the quadratic grouping it replaced, measured in the same run.

``python -m bench.status_probe [--dsn DSN] [--types 5000,20000,100000]``

Event types are data, so a producer bug can make 100,000 of them. For each size this fills a
fresh database with one pending event per type, then times (wall clock, whole process):
``pgqueue status`` (top 50, the default), ``pgqueue status --all`` (stdout to /dev/null),
``pgqueue events list`` and ``pgqueue status --watch`` (one refresh); and, in process, the old
grouping (every row rescanned per type) against ``print_status`` on the same report, the
old one only up to 20,000 types (76 s measured there; 100,000 never finished in 120 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import asyncpg

from pgqueue._api import StatusReport
from pgqueue._cli.admin import print_status
from pgqueue.admin import status

from ._db import DEFAULT_ADMIN_DSN, Databases

CLI = [sys.executable, "-c", "from pgqueue._cli.main import main; main()"]
OLD_UP_TO = 20_000


def old_grouping(report: StatusReport) -> int:
    """The table building before issue 11 (rows rescanned for every type); returns rows."""
    types = sorted({r.event_type for r in report.counts})
    table = []
    for t in types:
        rows = {r.state: r for r in report.counts if r.event_type == t}
        table.append([t, *rows])
    return len(table)


def timed_cli(*args: str, dsn: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [*CLI, *args, "--dsn", dsn], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - start


def timed_watch(dsn: str) -> float:
    """Seconds until the first refresh of ``status --watch`` is printed."""
    start = time.perf_counter()
    with subprocess.Popen(
        [*CLI, "status", "--watch", "--interval", "60", "--dsn", dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"... and") or line.startswith(b"handlers"):
                break
        elapsed = time.perf_counter() - start
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return elapsed


async def measure(dsn: str, types: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO pgqueue.outbox (event_type) "
            "SELECT 'zz.t' || g FROM generate_series(1, $1::int) g",
            types,
        )
        await conn.execute("ANALYZE pgqueue.outbox")
        report = await status(conn)
    finally:
        await conn.close()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        print_status(report, 50)
    new = time.perf_counter() - start
    old = "not run"
    if types <= OLD_UP_TO:
        start = time.perf_counter()
        old_grouping(report)
        old = f"{time.perf_counter() - start:.2f} s"
    print(
        f"{types:>7} types: status {timed_cli('status', dsn=dsn):.2f} s, "
        f"status --all {timed_cli('status', '--all', dsn=dsn):.2f} s, "
        f"events list {timed_cli('events', 'list', dsn=dsn):.2f} s, "
        f"status --watch first refresh {timed_watch(dsn):.2f} s | in process: "
        f"print_status {new * 1000:.1f} ms, old grouping {old}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    db = Databases(args.dsn)
    await db.setup()
    try:
        for types in (int(t) for t in args.types.split(",")):
            async with db.fresh() as dsn:
                await measure(dsn, types)
    finally:
        await db.teardown()
    print(f"command: python -m bench.status_probe --types {args.types}  (pid {os.getpid()})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN)
    parser.add_argument("--types", default="5000,20000,100000")
    asyncio.run(main(parser.parse_args()))
