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
interval) one claim reads the whole index again.

Rows below the floor are late commits: a producer transaction open longer than FLOOR_MARGIN
(``run_at`` is its start), a ``run_at`` in the past (an application clock behind the
database's, a cron tick emitted late). Every such commit sends a NOTIFY or is swept after one
(sql/0011_producer_commit.sql, _worker/listener.py), so after each notification (after its sweep)
the worker owes a full claim: :meth:`owe_full`. Owed full claims are spaced at least
FULL_CLAIM_GAP apart, so a late-committed event waits at most about FULL_CLAIM_GAP after its
notification, whatever the poll interval (issue 11: with --poll-interval 20 such events had
waited 21-32 s). A full claim reads every dead entry before the ready ones: 1.4 ms after
300,000 events without vacuum, so at most 1.4% of a claimer's time at that spacing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

from .._queries import ClaimedRow

# Producer transactions shorter than this are always seen by the bounded claims; the walk over
# dead entries costs about FLOOR_MARGIN seconds' worth of events (2 s at 10k/s: ~100 pages).
FLOOR_MARGIN = 2.0

# Owed full claims (after a notification) run at most this often per queue.
FULL_CLAIM_GAP = 0.1

UNBOUNDED = -math.inf


class ReadyFloor:
    """Per-queue lower bounds on ``run_at`` for the claim (epoch seconds, database clock)."""

    def __init__(self, full_scan_every: float, *, enabled: bool = True) -> None:
        self._every = full_scan_every
        self._enabled = enabled
        self._floor: dict[str, float] = {}
        self._full_scan_at: dict[str, float] = {}
        self._owed: set[str] = set()

    def bound(self, queue: str) -> float:
        """The ``run_at`` the next claim of ``queue`` starts at (UNBOUNDED: read it all)."""
        floor = self._floor.get(queue)
        now = time.monotonic()
        since_full = now - self._full_scan_at.get(queue, UNBOUNDED)
        if (
            not self._enabled
            or floor is None
            or since_full >= self._every
            or (queue in self._owed and since_full >= FULL_CLAIM_GAP)
        ):
            self._full_scan_at[queue] = now
            self._owed.discard(queue)
            return UNBOUNDED
        return floor

    def claimed(self, queue: str, rows: Sequence[ClaimedRow], limit: int) -> None:
        """Record a claim's result: a short, non-empty batch moves the bound up."""
        if rows and len(rows) < limit:
            self._floor[queue] = rows[0].db_now - FLOOR_MARGIN

    def owe_full(self, queues: Iterable[str]) -> None:
        """A notification (after its sweep) for ``queues``: their next claims read it all."""
        self._owed.update(queues)

    def owed_in(self) -> float | None:
        """Seconds until an owed full claim may run (None: none is owed)."""
        if not self._owed:
            return None
        now = time.monotonic()
        return max(
            0.0,
            min(self._full_scan_at.get(q, UNBOUNDED) + FULL_CLAIM_GAP - now for q in self._owed),
        )
