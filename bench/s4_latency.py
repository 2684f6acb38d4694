"""Figure 4: enqueue-to-handler latency on an idle, listening worker.

A worker process idles on LISTEN; a separate producer process enqueues 500 events one at a
time, 20 ms apart, each in its own (autocommit) transaction. Latency = handler start
(time.monotonic() in the worker) minus the moment the producer's enqueue call returned, i.e.
its commit was acknowledged (CLOCK_MONOTONIC is system-wide on Linux, so both processes read
the same clock). Also reported: from the moment the call was issued (an upper bound).
"""

from __future__ import annotations

from typing import Any

from ._options import Bench, Figures
from ._proc import Child, scalar, wait_until
from ._stats import percentile
from ._systems import PGQUEUE, PGQUEUER, REMAINING, producer

COUNT = 500
GAP = 0.02
WARMUP = 20


async def warm_up(dsn: str, system: str, count: int = WARMUP) -> None:
    """Enqueue a few events and wait until they are finished: the worker is up and listening."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        p = producer(system, conn)
        for n in range(count):
            await p.one(-1 - n)

        async def drained() -> bool:
            return await conn.fetchval(REMAINING[system]) == 0

        await wait_until(drained, 60, f"{system} worker to finish its warm-up events")
    finally:
        await conn.close()


async def measure(bench: Bench, system: str) -> dict[str, Any]:
    async with bench.db.fresh() as dsn:
        worker = await Child("worker", "--system", system, "--dsn", dsn, "--record").start()
        try:
            await warm_up(dsn, system)
            sent = (
                await (
                    await Child(
                        "producer",
                        "--system",
                        system,
                        "--dsn",
                        dsn,
                        "latency",
                        "--count",
                        str(COUNT),
                        "--gap",
                        str(GAP),
                    ).start()
                ).wait(timeout=120)
            )["sent"]

            async def drained() -> bool:
                return await scalar(dsn, REMAINING[system]) == 0

            await wait_until(drained, 60, f"{system} worker to finish the latency events")
            result = await worker.stop()
        finally:
            worker.kill()
    starts = {int(s[0]): float(s[1]) for s in result["starts"]}
    commit = [starts[int(i)] - t_ret for i, _, t_ret in sent]
    call = [starts[int(i)] - t_call for i, t_call, _ in sent]
    return {
        "p50": percentile(commit, 50) * 1000,
        "p99": percentile(commit, 99) * 1000,
        "call_p50": percentile(call, 50) * 1000,
        "call_p99": percentile(call, 99) * 1000,
    }


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    for system in (PGQUEUE, PGQUEUER):
        for key, value in (await measure(bench, system)).items():
            out[f"latency_{key}.{system}"] = value
    return out
