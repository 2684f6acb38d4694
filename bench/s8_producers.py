"""Figure 8: what the outbox costs the application's own transactions, with many producers.

pgbench (PostgreSQL's C client, not ours) runs one transaction shape per run: one order row
INSERT plus one event, the event written

- ``plain``: to a plain table with the same basic columns (id identity, event_type, payload
  jsonb, created_at, processed_at) and no queue: the baseline;
- ``outbox``: with the documented ``INSERT INTO pgqueue.outbox (event_type, payload)``;
- ``outbox_nonotify``: the same with the NOTIFY trigger disabled (what the row costs).

at 1, 16 and 64 clients and the most clients ``max_connections`` leaves room for, each run
``SECONDS`` long (``--quick``: 4 s), the three variants one after the other in an order that
rotates from run to run, on a private PostgreSQL server started for the scenario (initdb in a
temporary directory, stock settings: max_connections 100, fsync and synchronous_commit on;
the server behind --dsn may be shared, and other clients would take the connection slots and
land their load inside the runs); every table is truncated and a CHECKPOINT taken before each
measured run; the server and its directory are removed at the end. An idle pgqueue worker
listens meanwhile (it serves another queue; every notification reaches its LISTEN connection):
the issue measured 0.2x with one. Figures: tps and mean latency per
variant, and the outbox / plain ratio of each run. The exact pgbench command is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

import pgqueue
from pgqueue._embedded import EmbeddedPostgres

from ._db import checkpoint
from ._options import Bench, Figures, Options

SECONDS = 10.0
QUICK_SECONDS = 4.0
CLIENTS = (1, 16, 64)
# Connections left for the listening worker (claim, control, LISTEN) and this script.
HEADROOM = 8
VARIANTS = ("plain", "outbox", "outbox_nonotify")
PAYLOAD = '{"order_id": 42, "customer_id": 17, "total": "42.50"}'

SETUP = """
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL,
    amount numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE plain_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
"""

SCRIPT = """\\set customer random(1, 100000)
BEGIN;
INSERT INTO orders (customer_id, amount) VALUES (:customer, 42.50);
INSERT INTO {table} (event_type, payload) VALUES ('order.placed', '{payload}');
COMMIT;
"""


def run_seconds(opts: Options) -> float:
    """Seconds per pgbench run."""
    return QUICK_SECONDS if opts.quick else SECONDS


def pgbench_path() -> str:
    """pgbench on PATH or in PostgreSQL 15's bin folder; a clear error when missing."""
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    raise RuntimeError(
        "pgbench not found: install it (Debian: apt-get install postgresql-client or "
        "postgresql-contrib) and run again"
    )


async def max_clients(conn: asyncpg.Connection) -> int:
    """The most pgbench clients the server has connection slots for, right now."""
    limit = int(await conn.fetchval("SHOW max_connections"))
    reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
    used = int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity"))
    return max(1, limit - reserved - used - HEADROOM)


@contextlib.asynccontextmanager
async def idle_worker(dsn: str) -> AsyncIterator[None]:
    """A listening pgqueue worker with nothing to do: it serves queue ``bench_idle``.

    PostgreSQL delivers every notification of the channel to its LISTEN connection, as to any
    worker; it claims nothing. (A worker of the same queue would claim the events, or, without
    a handler for their type, walk the whole pile of pending ones on every claim: a cost of
    the consumer, not of the producers' transactions.)
    """
    registry = pgqueue.Registry()

    async def nothing(payload: dict[str, object], ctx: pgqueue.Context) -> None:
        return None

    registry.add("bench.other", nothing, name="nothing")
    settings = pgqueue.WorkerSettings(poll_interval=1.0, queues=("bench_idle",))
    worker = pgqueue.Worker(dsn, registry, settings)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.5)  # connected and listening (or failed: the task says)
    if task.done():
        task.result()
    try:
        yield
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=30)


def command(pgbench: str, script: str, clients: int, seconds: float, dsn: str) -> list[str]:
    threads = max(1, min(clients, os.cpu_count() or 1))
    return [pgbench, "-n", "-M", "prepared", "-f", script, "-c", str(clients), "-j",
            str(threads), "-T", f"{seconds:g}", dsn]  # fmt: skip


def describe(pgbench: str, seconds: float, most: int | str = "<max>") -> str:
    """The exact pgbench command and transaction scripts, for the report."""
    shown = command(pgbench, "<variant>.sql", 64, seconds, "<fresh database>")
    scripts = "\n".join(
        f"  {v}.sql: " + SCRIPT.format(table=t, payload=PAYLOAD).replace("\n", " ")
        for v, t in (("plain", "plain_events"), ("outbox", "pgqueue.outbox"))
    )
    return (
        f"figure 8 (producers): {shlex.join(shown)}  (-c 1, 16, 64, {most}; -j = min(clients, "
        f"cores)) on a private server; outbox_nonotify = outbox.sql with `ALTER TABLE "
        f"pgqueue.outbox DISABLE TRIGGER outbox_notify`; tables truncated and CHECKPOINT "
        f"before each run; an idle pgqueue worker (queue bench_idle) listens\n{scripts}"
    )


async def pgbench_run(argv: list[str]) -> tuple[float, float]:
    """Run pgbench; return (tps, mean latency in ms)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+)", text, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    if proc.returncode != 0 or not tps or not latency:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {text.strip()[-500:]}")
    return float(tps.group(1)), float(latency.group(1))


async def prepare(conn: asyncpg.Connection, variant: str) -> None:
    """Empty tables, the trigger as the variant wants it, then a checkpoint."""
    await conn.execute("TRUNCATE orders, plain_events, pgqueue.outbox")
    state = "DISABLE" if variant == "outbox_nonotify" else "ENABLE"
    await conn.execute(f"ALTER TABLE pgqueue.outbox {state} TRIGGER outbox_notify")
    await checkpoint(conn)


def write_scripts(folder: str) -> dict[str, str]:
    """One pgbench script per variant in ``folder``; their paths."""
    scripts = {}
    for variant in VARIANTS:
        table = "plain_events" if variant == "plain" else "pgqueue.outbox"
        scripts[variant] = str(Path(folder) / f"{variant}.sql")
        Path(scripts[variant]).write_text(SCRIPT.format(table=table, payload=PAYLOAD))
    return scripts


@contextlib.asynccontextmanager
async def private_server(version: str) -> AsyncIterator[str]:
    """A private PostgreSQL with stock settings in a temporary directory; removed on exit.

    The server behind --dsn may be shared: other clients' connections take the slots the
    high client counts need, and their load lands inside the runs. ``version`` (bin/bench
    --pg): that major's binaries, from the cache of tests/pgversions.py.
    """
    data_dir = Path(tempfile.gettempdir()) / f"pgqueue_bench_producers_{os.getpid()}"
    bindir = None
    if version:
        from tests import pgversions

        bindir = pgversions.bindir(version)
    server = EmbeddedPostgres(data_dir, bindir=bindir)
    try:
        dsn = await asyncio.to_thread(server.start)
        conn = await asyncpg.connect(dsn)
        try:
            await pgqueue.migrate(conn)
            await conn.execute(SETUP)
        finally:
            await conn.close()
        yield dsn
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


async def run(bench: Bench) -> Figures:
    pgbench = pgbench_path()
    seconds = run_seconds(bench.opts)
    # The variants' order rotates from run to run (bench.db.made grows by one per run), so no
    # variant always goes first.
    bench_round = bench.db.made
    out: Figures = {}
    folder = tempfile.mkdtemp(prefix="pgqueue_bench_producers_")
    scripts = write_scripts(folder)
    try:
        async with bench.db.fresh(), private_server(bench.opts.pg) as dsn, idle_worker(dsn):
            conn = await asyncpg.connect(dsn)
            try:
                most = await max_clients(conn)
                print(describe(pgbench, seconds, most), file=sys.stderr)
                for n, clients in enumerate((*CLIENTS, most)):
                    key = "cmax" if n == len(CLIENTS) else f"c{clients}"
                    shift = (bench_round + n) % len(VARIANTS)
                    tps: dict[str, float] = {}
                    for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                        await prepare(conn, variant)
                        argv = command(pgbench, scripts[variant], clients, seconds, dsn)
                        tps[variant], latency = await pgbench_run(argv)
                        out[f"producers.{variant}.{key}"] = tps[variant]
                        out[f"producers_ms.{variant}.{key}"] = latency
                    out[f"producers_ratio.{key}"] = tps["outbox"] / tps["plain"]
                    out[f"producers_ratio_nonotify.{key}"] = tps["outbox_nonotify"] / tps["plain"]
                    out[f"producers_clients.{key}"] = float(clients)
            finally:
                await conn.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out
