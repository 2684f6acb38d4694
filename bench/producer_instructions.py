"""What the outbox costs a producer's transaction, in backend instructions (issue 10).

    .venv/bin/python -m bench.producer_instructions        (needs valgrind; about 2 minutes)

pgbench's tps on a shared 2-core machine moves with whatever else runs on it; instruction
counts do not. This runs a single-user PostgreSQL backend (``postgres --single``) under
``valgrind --tool=callgrind`` over Figure 8's transaction (bench/s8_producers.py: one order row
and one event) as prepared statements, once for 200 and once for 600 transactions: the
difference divided by 400 is one transaction's instructions (start-up, parsing and planning
cancel out). It prints that for the plain table, the outbox, and the outbox with
``outbox_notify`` disabled, then the per-row cost of a 1,000-row ``INSERT ... SELECT`` into the
outbox (``enqueue_many``'s shape). The method and the breakdown: docs/producers-performance.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

import pgqueue
from pgqueue._embedded import EmbeddedPostgres
from pgqueue._serviceuser import server_account

from .s8_producers import PAYLOAD, SETUP

ORDER = "PREPARE o(bigint) AS INSERT INTO orders (customer_id, amount) VALUES ($1, 42.50);"
EVENT = (
    "PREPARE e AS INSERT INTO {table} (event_type, payload) VALUES ('order.placed', '{payload}');"
)
TRANSACTION = "BEGIN;\nEXECUTE o({i});\nEXECUTE e;\nCOMMIT;\n"
BULK = (
    "BEGIN;\nINSERT INTO pgqueue.outbox (event_type, payload) SELECT 'order.placed', "
    "'{payload}' FROM generate_series(1, 1000);\nCOMMIT;\n"
)
SMALL, LARGE = 200, 600
BULK_SMALL, BULK_LARGE = 2, 6


def script(table: str, transactions: int) -> str:
    head = ORDER + "\n" + EVENT.format(table=table, payload=PAYLOAD) + "\n"
    return head + "".join(TRANSACTION.format(i=i) for i in range(transactions))


def bulk_script(transactions: int) -> str:
    return BULK.format(payload=PAYLOAD) * transactions


def instructions(bindir: Path, data_dir: Path, text: str, work: Path) -> int:
    """Instructions of one single-user backend run reading ``text`` (one command per line)."""
    account = server_account(data_dir) if os.geteuid() == 0 else None
    if account:  # the server's account writes callgrind's file
        os.chown(work, account.pw_uid, account.pw_gid)
    out = work / "callgrind.out"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        str(bindir / "postgres"), "--single", "-D", str(data_dir),
        "-c", "fsync=off", "-c", "synchronous_commit=off", "bench",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        input=text,
        text=True,
        capture_output=True,
        check=False,
        user=account.pw_uid if account else None,
        group=account.pw_gid if account else None,
        cwd=work,
    )
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"postgres --single under valgrind failed: {last[0]}")
    found = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    out.unlink()
    if found is None:
        raise RuntimeError("callgrind wrote no summary line")
    return int(found.group(1))


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE DATABASE bench")
    finally:
        await conn.close()
    bench_dsn = dsn.rsplit("/", 1)[0] + "/bench"
    conn = await asyncpg.connect(bench_dsn)
    try:
        await pgqueue.migrate(conn)
        await conn.execute(SETUP)
    finally:
        await conn.close()


def main() -> int:
    if shutil.which("valgrind") is None:
        print("bench.producer_instructions: valgrind not found: apt-get install valgrind",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="pgqueue-instructions-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # searchable by the server's account, under root
        server = EmbeddedPostgres(work / "data")
        asyncio.run(prepare(server.start()))
        bindir = server._bindir  # the binaries the server ran with
        assert bindir is not None
        server.stop()
        rows: list[tuple[str, int]] = []
        for label, table, setup in [
            ("plain table", "plain_events", ""),
            ("pgqueue.outbox", "pgqueue.outbox", ""),
            ("pgqueue.outbox, outbox_notify disabled", "pgqueue.outbox",
             "ALTER TABLE pgqueue.outbox DISABLE TRIGGER outbox_notify;\n"),
        ]:  # fmt: skip
            small = instructions(bindir, server.data_dir, setup + script(table, SMALL), work)
            large = instructions(bindir, server.data_dir, setup + script(table, LARGE), work)
            if setup:  # leave the table as migrate made it for the next variant
                instructions(
                    bindir, server.data_dir,
                    "ALTER TABLE pgqueue.outbox ENABLE TRIGGER outbox_notify;\n", work,
                )  # fmt: skip
            rows.append((label, (large - small) // (LARGE - SMALL)))
        small = instructions(bindir, server.data_dir, bulk_script(BULK_SMALL), work)
        large = instructions(bindir, server.data_dir, bulk_script(BULK_LARGE), work)
        per_row = (large - small) // ((BULK_LARGE - BULK_SMALL) * 1000)
    plain = rows[0][1]
    print("backend instructions per producer transaction (callgrind, PostgreSQL single-user)")
    for label, count in rows:
        print(f"  {label:<42} {count:>9,}  {count / plain:5.2f}x plain")
    print(f"  1,000-row INSERT ... SELECT into the outbox: {per_row:,} per row")
    print("command: .venv/bin/python -m bench.producer_instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
