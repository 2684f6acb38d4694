"""The typed calls of status, prune, the metrics' depths and pgqueue.testing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from .statements import Statements


class AdminCalls(Statements):
    """One method per statement of ``admin``: counts, prune, depths, test helpers."""

    async def active_count_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Pending / running / dead counts per event type, with the oldest ready age."""
        return list(await conn.fetch(self.active_counts))

    async def done_count_rows(
        self, conn: asyncpg.Connection, percent: float | None = None
    ) -> list[Any]:
        """Done events per type: exact, or counted on ``percent`` % of the pages and scaled."""
        if percent is None:
            return list(await conn.fetch(self.done_counts))
        return list(await conn.fetch(self.done_counts_sampled, percent))

    async def outbox_rows(self, conn: asyncpg.Connection) -> float:
        """The planner's estimate of the outbox's rows (negative: never analyzed)."""
        rows: float = await conn.fetchval(self.outbox_rows_estimate)
        return rows

    async def dead_handler_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Dead counts per event type and handler."""
        return list(await conn.fetch(self.dead_handlers))

    async def count_prunable(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        include_discarded: bool = False,
        include_cancelled: bool = False,
    ) -> int:
        """How many events a prune with these settings would delete now."""
        count: int = await conn.fetchval(
            self.prune_count, age, include_dead, include_discarded, include_cancelled
        )
        return count

    async def prune_once(
        self,
        conn: asyncpg.Connection,
        age: dt.timedelta,
        include_dead: bool,
        limit: int,
        include_discarded: bool = False,
        include_cancelled: bool = False,
    ) -> int:
        """Delete one batch of old events (and their ledger rows); return how many."""
        deleted: int = await conn.fetchval(
            self.prune_batch, age, include_dead, include_discarded, limit, include_cancelled
        )
        return deleted

    async def events_for_tests(self, conn: asyncpg.Connection, event_type: str | None) -> list[Any]:
        """Every outbox row (of ``event_type`` when given), by id, for pgqueue.testing."""
        return list(await conn.fetch(self.test_events, event_type))

    async def advance_scheduled(
        self, conn: asyncpg.Connection, event_types: Sequence[str], queues: Sequence[str]
    ) -> int:
        """Make the scheduled pending events of these types and queues due now; return how
        many (pgqueue.testing only)."""
        return len(await conn.fetch(self.test_advance, list(event_types), list(queues)))

    async def queue_depths(
        self, conn: asyncpg.Connection, queues: Sequence[str], limit: int
    ) -> list[Any]:
        """Per queue: ready and scheduled pending events (each counted up to ``limit``) and
        the oldest ready age in seconds (None when nothing is ready)."""
        return list(await conn.fetch(self.depths, list(queues), limit))

    async def dead_counts(self, conn: asyncpg.Connection, limit: int) -> list[Any]:
        """Dead events per event type, reading at most ``limit`` rows."""
        return list(await conn.fetch(self.dead_by_type, limit))
