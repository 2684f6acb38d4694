"""Figure 7: worker memory. One worker process drains 200,000 events; its peak RSS (VmHWM from
/proc/self/status) is read when the 20,000th event's handler starts and again at the end.
Growth = peak at the end minus peak at 20,000. PgQueuer (batch_size=100) alongside.
"""

from __future__ import annotations

from ._options import Bench, Figures
from ._systems import PGQUEUE, PGQUEUER
from .s3_drain import drain

TOTAL = 200_000
MARK = 20_000


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    for system, batch_size in ((PGQUEUE, 0), (PGQUEUER, 100)):
        r = await drain(bench, system, batch_size=batch_size, count=TOTAL, mark_at=MARK)
        peak_kb, mark_kb = r["status"]["VmHWM"], r["mark"]["VmHWM"]
        out[f"memory_peak_mb.{system}"] = peak_kb / 1024
        out[f"memory_at_20k_mb.{system}"] = mark_kb / 1024
        out[f"memory_growth_mb.{system}"] = (peak_kb - mark_kb) / 1024
        out[f"drain200k.{system}"] = r["rate"]
    return out
