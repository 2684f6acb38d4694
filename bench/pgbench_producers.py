"""Concurrent producers in pgbench (C clients): what the outbox adds to the application's own
transaction, on any PostgreSQL version (issue 17 asked for it on 18).

    python -m bench.pgbench_producers --pg 18 [--clients 16] [--seconds 10] [--runs 3]
    python -m bench.pgbench_producers --dsn postgresql://postgres@127.0.0.1:5432/postgres

Three transactions, each BEGIN ... COMMIT of a checkout, run in turn (ABC ABC ABC, so drift on
this shared machine hits every case alike), each ``pgbench -n -M prepared -c CLIENTS -j 2``:

- ``order``:        INSERT one order row (the application alone, the ceiling)
- ``order+plain``:  the order row and one event row into a plain table of the outbox's shape
                    (no trigger, no checks, no partial indexes)
- ``order+outbox``: the order row and ``INSERT INTO pgqueue.outbox`` (checks, indexes and the
                    per-statement NOTIFY trigger: what pgqueue adds)

Prints median [min-max] tps of each, the ratios to ``order``, and the command. pgbench is the
machine's (any recent pgbench drives any server version). Database ``pgqueue_pgbench_<pid>``,
dropped at the end; ``--pg`` starts a private server of that version (tests/pgversions.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

import pgqueue

from ._db import DEFAULT_ADMIN_DSN, dsn_for, private_server

SETUP = """
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer int NOT NULL, total numeric(12, 2) NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE plain_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                           queue text NOT NULL DEFAULT 'default', event_type text NOT NULL,
                           payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""
ORDER = "INSERT INTO orders (customer, total) VALUES (:c, 19.90);\n"
CASES = {
    "order": ORDER,
    "order+plain": ORDER + "INSERT INTO plain_events (event_type, payload)"
    " VALUES ('order.placed', jsonb_build_object('customer', :c::int));\n",
    "order+outbox": ORDER + "INSERT INTO pgqueue.outbox (event_type, payload)"
    " VALUES ('order.placed', jsonb_build_object('customer', :c::int));\n",
}


def script(body: str) -> str:
    return "\\set c random(1, 100000)\nBEGIN;\n" + body + "COMMIT;\n"


def pgbench() -> str:
    found = shutil.which("pgbench") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None
    )
    if found is None:
        raise SystemExit("pgbench not found: apt-get install postgresql-contrib (or postgresql)")
    return found


def run_case(dsn: str, path: Path, clients: int, seconds: int) -> float:
    command = [pgbench(), "-n", "-M", "prepared", "-c", str(clients), "-j", "2",
               "-T", str(seconds), "-f", str(path), dsn]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise SystemExit(f"pgbench failed: {out.stderr.strip() or out.stdout.strip()}")
    return float(match.group(1))


async def prepare(admin_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        version = await admin.fetchval("SHOW server_version")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_for(admin_dsn, name))
    try:
        await pgqueue.migrate(conn)
        await conn.execute(SETUP)
    finally:
        await conn.close()
    return str(version)


async def drop(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def measure(admin_dsn: str, args: argparse.Namespace) -> None:
    name = f"pgqueue_pgbench_{os.getpid()}"
    version = asyncio.run(prepare(admin_dsn, name))
    dsn = dsn_for(admin_dsn, name)
    tps: dict[str, list[float]] = {case: [] for case in CASES}
    try:
        with tempfile.TemporaryDirectory() as folder:
            paths = {case: Path(folder) / f"{case}.sql" for case in CASES}
            for case, path in paths.items():
                path.write_text(script(CASES[case]))
            for run in range(1, args.runs + 1):
                for case, path in paths.items():
                    tps[case].append(run_case(dsn, path, args.clients, args.seconds))
                    print(f"[run {run}/{args.runs}] {case}: {tps[case][-1]:,.0f} tps",
                          file=sys.stderr)  # fmt: skip
    finally:
        asyncio.run(drop(admin_dsn, name))
    base = statistics.median(tps["order"])
    print(f"\nPostgreSQL {version}, {args.clients} clients, {args.seconds} s per run, "
          f"median [min-max] of {args.runs}")  # fmt: skip
    for case, values in tps.items():
        median = statistics.median(values)
        print(f"  {case:<13} {median:>9,.0f} tps [{min(values):,.0f}-{max(values):,.0f}]"
              f"  {median / base:.2f}x order")  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pgbench_producers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="maintenance DSN (CREATEDB)")
    parser.add_argument("--pg", default="", metavar="VERSION", help="a private server instead")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.pg:
        with private_server(args.pg) as dsn:
            measure(dsn, args)
    else:
        measure(args.dsn, args)
    print(f"reproduce: {shlex.join(['python', '-m', 'bench.pgbench_producers', *argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
