"""Where a claim may start reading the ready index: a per-queue lower bound on ``run_at``.

Why: claimed rows leave ``outbox_ready_idx`` only when VACUUM removes their entries. Until
then every claim walks over them from the oldest ``run_at`` on (the kill bits make each entry
cheap, not free). Measured without vacuum: after 300,000 events a claim read 1,482 index pages
(1.4 ms) to find 50 ready rows, against 3 pages after VACUUM; at 10,000 events/s that walk grew
through a 30-second run and with it the lag. Stock autovacuum wakes once a minute at best.

The bound: a claim that returned fewer rows than asked for took everything ready in its
snapshot. Rows that turn pending later get ``run_at >= now()`` from pgqueue itself (retries,
rescues, hand-backs) or from their producer's transaction start, so once a short claim has
run at database time T, the rows it missed are only those whose producer transaction began
before T and committed after it, or rows enqueued with a ``run_at`` in the past. The next
claims read from ``T - FLOOR_MARGIN`` on; every ``full_scan_every`` seconds (the poll
interval) one claim reads the whole index again, so such rows wait at most that long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from ._queries import ClaimedRow

# Producer transactions shorter than this are always seen by the bounded claims; the walk over
# dead entries costs about FLOOR_MARGIN seconds' worth of events (2 s at 10k/s: ~100 pages).
FLOOR_MARGIN = 2.0

UNBOUNDED = -math.inf


class ReadyFloor:
    """Per-queue lower bounds on ``run_at`` for the claim (epoch seconds, database clock)."""

    def __init__(self, full_scan_every: float, *, enabled: bool = True) -> None:
        self._every = full_scan_every
        self._enabled = enabled
        self._floor: dict[str, float] = {}
        self._full_scan_at: dict[str, float] = {}

    def bound(self, queue: str) -> float:
        """The ``run_at`` the next claim of ``queue`` starts at (UNBOUNDED: read it all)."""
        floor = self._floor.get(queue)
        now = time.monotonic()
        if (
            not self._enabled
            or floor is None
            or now - self._full_scan_at.get(queue, UNBOUNDED) >= self._every
        ):
            self._full_scan_at[queue] = now
            return UNBOUNDED
        return floor

    def claimed(self, queue: str, rows: Sequence[ClaimedRow], limit: int) -> None:
        """Record a claim's result: a short, non-empty batch moves the bound up."""
        if rows and len(rows) < limit:
            self._floor[queue] = rows[0].db_now - FLOOR_MARGIN
