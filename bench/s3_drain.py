"""Figure 3: drain 20,000 pre-enqueued events with ONE worker OS process and no-op handlers.

events/s = events / (worker ``run()`` entry to return, timed inside the worker process: this
includes connecting, startup and the final flush). Completion is then checked in the database:
no unfinished row left and every event recorded as done. pgqueue with its default settings, one
handler and three handlers per event (fan-out); PgQueuer with its default batch_size (10) and
with 100 (its best configuration measured here). And the reference of issue 4: a minimal
hand-written asyncpg loop (bench/minimal.py: claim 100, mark processed, no leases, no retries),
the database's own pace on this machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ._options import Bench, Figures
from ._proc import Child, scalar
from ._systems import DONE, MINIMAL, PGQUEUE, PGQUEUER, REMAINING, prefill

N = 20_000
Setup = Callable[[str], Awaitable[None]]


async def drain(
    bench: Bench,
    system: str,
    *,
    handlers: int = 1,
    batch_size: int = 0,
    count: int = N,
    setup: Setup | None = None,
    mark_at: int | None = None,
    metrics: bool = False,
    fill: Callable[[str, int], Awaitable[None]] | None = None,
    worker_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run one drain on a fresh database; return the worker's result plus ``rate``.
    ``fill`` enqueues the events instead of :func:`prefill`; ``worker_args`` go to the
    worker process as they are."""
    async with bench.db.fresh() as dsn:
        if setup is not None:
            await setup(dsn)
        await (fill or (lambda d, n: prefill(system, d, n)))(dsn, count)
        args = ["--system", system, "--dsn", dsn, "--burst", "--handlers", str(handlers)]
        args += worker_args
        args += ["--batch-size", str(batch_size)]
        if mark_at:
            args += ["--mark-at", str(mark_at)]
        if metrics:
            args.append("--metrics")
        result = await (await Child("worker", *args).start()).wait(timeout=900)
        remaining = await scalar(dsn, REMAINING[system])
        done = await scalar(dsn, DONE[system])
        if remaining or done < count or result["count"] != count:
            raise RuntimeError(
                f"{system} drain incomplete: {remaining} unfinished, {done} done in the "
                f"database, {result['count']} handler calls, expected {count}"
            )
        result["rate"] = count / (result["run_end"] - result["run_start"])
        return result


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    for key, system, kw in (
        ("drain.pgqueue", PGQUEUE, {}),
        ("drain.pgqueuer_bs10", PGQUEUER, {"batch_size": 10}),
        ("drain.pgqueuer_bs100", PGQUEUER, {"batch_size": 100}),
        ("drain3.pgqueue", PGQUEUE, {"handlers": 3}),
        ("drain.minimal", MINIMAL, {"batch_size": 100}),
    ):
        result = await drain(bench, system, **kw)
        out[key] = result["rate"]
        # Worker process CPU (user + sys) inside run(), per event: the client-side cost.
        out[key.replace("drain", "cpu_us", 1)] = result["cpu_run_s"] / N * 1e6
        # From the first to the last handler start: the rate without worker startup.
        span = result["last_start"] - result["first_start"]
        out[key.replace("drain", "span_rate", 1)] = N / span if span > 0 else 0.0
    return out
