"""Figure 6: cost of growth. The pgqueue drain figure again with 1,000,000 already-processed
rows in the outbox (one INSERT ... SELECT generate_series, state 'done', then VACUUM ANALYZE),
next to the empty-table drain measured in the same run.

PgQueuer has no equivalent: it deletes a finished job from its queue table (the history goes
to pgqueuer_log, which the dequeue never reads), so it is not measured here.
"""

from __future__ import annotations

import asyncpg

from ._options import Bench, Figures
from ._systems import PGQUEUE
from .s3_drain import drain

PROCESSED = 1_000_000

FILL = """
INSERT INTO pgqueue.outbox (event_type, payload, state, run_at, created_at, processed_at)
SELECT 'bench.event', jsonb_build_object('n', g), 'done', now(), now(), now()
FROM generate_series(1, $1::int) AS g
"""


async def fill(dsn: str) -> None:
    """Add the processed rows."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL, PROCESSED)
        await conn.execute("VACUUM ANALYZE pgqueue.outbox")
    finally:
        await conn.close()


async def run(bench: Bench) -> Figures:
    empty = (await drain(bench, PGQUEUE))["rate"]
    full = (await drain(bench, PGQUEUE, setup=fill))["rate"]
    return {
        "growth_empty.pgqueue": empty,
        "growth_full.pgqueue": full,
        "growth_ratio": full / empty,
    }
