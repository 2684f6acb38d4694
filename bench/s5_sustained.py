"""Figure 5: sustained load. A producer process enqueues at a fixed rate (default 10,000/s,
``enqueue_many`` every 5 ms with whatever is due) for 30 s (5 s with --quick) while ONE worker
process drains.

Keeping up = the backlog (unfinished events) the moment the producer stops, and how long the
worker then needs to finish it. Lag = handler start (wall clock, time.time() in the handler)
minus the event's created_at (database now() of the producing transaction; same host, same
clock). For pgqueue the database proxy processed_at - created_at is reported too (it includes
the completion batching delay).
"""

from __future__ import annotations

import time
from typing import Any

from ._options import Bench, Figures
from ._proc import Child, scalar, wait_until
from ._stats import percentile
from ._systems import PGQUEUE, PGQUEUER, REMAINING
from .s4_latency import WARMUP, warm_up

CATCH_UP_LIMIT = 60.0
DB_LAG_P99 = """
SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - created_at))
FROM pgqueue.outbox WHERE state = 'done'
"""


async def measure(bench: Bench, system: str, batch_size: int = 0) -> dict[str, Any]:
    rate, seconds = bench.opts.rate, bench.opts.sustained_seconds
    async with bench.db.fresh() as dsn:
        args = ["--system", system, "--dsn", dsn, "--record", "--batch-size", str(batch_size)]
        worker = await Child("worker", *args).start()
        try:
            await warm_up(dsn, system)
            produced = await (
                await Child(
                    "producer", "--system", system, "--dsn", dsn, "rate",
                    "--rate", str(rate), "--seconds", str(seconds),
                ).start()
            ).wait(timeout=seconds + 120)  # fmt: skip
            stopped = time.monotonic()
            backlog = await scalar(dsn, REMAINING[system])

            async def drained() -> bool:
                return await scalar(dsn, REMAINING[system]) == 0

            # A worker that fell far behind is not waited for: after CATCH_UP_LIMIT seconds it
            # is stopped, catch_up_s shows the limit, caught_up 0, and the lag percentiles
            # cover only the events it reached (the rest waited longer still).
            caught_up = True
            try:
                await wait_until(drained, CATCH_UP_LIMIT, "catch-up", interval=0.01)
            except RuntimeError:
                caught_up = False
            catch_up = time.monotonic() - stopped
            db_lag = await scalar(dsn, DB_LAG_P99) if system == PGQUEUE else None
            result = await worker.stop()
        finally:
            worker.kill()
    # Records are in handler-start order: the first WARMUP are the warm-up events.
    lags = [wall - created for _, _, wall, created in result["starts"][WARMUP:]]
    out = {
        "rate": produced["rate"],
        "backlog": float(backlog),
        "catch_up_s": catch_up,
        "caught_up": float(caught_up),
        "lag_p50": percentile(lags, 50) * 1000,
        "lag_p99": percentile(lags, 99) * 1000,
    }
    if db_lag is not None:
        out["db_lag_p99"] = db_lag * 1000
    return out


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    for system, batch_size in ((PGQUEUE, 0), (PGQUEUER, 100)):
        for key, value in (await measure(bench, system, batch_size)).items():
            out[f"sustained_{key}.{system}"] = value
    return out
