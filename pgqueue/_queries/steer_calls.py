"""The typed calls of retry, discard, replay and the events list / show."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import asyncpg

from .statements import Statements

# lows, highs, event type, handler, since, until: the parameters $1-$6 of the steer statements.
SelectionArgs = tuple[
    list[int] | None,
    list[int] | None,
    str | None,
    str | None,
    dt.datetime | None,
    dt.datetime | None,
]


class SteerCalls(Statements):
    """One method per statement of ``steer``: select, retry, discard, replay, inspect."""

    async def database_now(self, conn: asyncpg.Connection) -> dt.datetime:
        """The database clock."""
        now: dt.datetime = await conn.fetchval(self.db_now)
        return now

    async def count_dead_events(self, conn: asyncpg.Connection, sel: SelectionArgs) -> int:
        """How many dead events match (with a handler: where that handler is dead)."""
        count: int = await conn.fetchval(self.count_dead, *sel)
        return count

    async def retry_dead_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Dead -> pending for the next batch after id ``after``; return their ids, sorted."""
        return sorted(r[0] for r in await conn.fetch(self.retry_batch, *sel, after, limit))

    async def discard_dead_batch(
        self, conn: asyncpg.Connection, sel: SelectionArgs, after: int, limit: int
    ) -> list[int]:
        """Discard the dead handlers of the next batch after id ``after``; return the ids."""
        return sorted(r[0] for r in await conn.fetch(self.discard_batch, *sel, after, limit))

    async def find_replay(self, conn: asyncpg.Connection, filter_json: str) -> Any:
        """(now, id, started_at, last_id, touched); id NULL when no unfinished replay."""
        return await conn.fetchrow(self.replay_find, filter_json)

    async def start_replay(
        self, conn: asyncpg.Connection, filter_json: str, started_at: dt.datetime, after: int
    ) -> None:
        """Create the replay row unless an unfinished one has this filter."""
        await conn.execute(self.replay_start, filter_json, started_at, after)

    async def replay_counts(
        self,
        conn: asyncpg.Connection,
        sel: SelectionArgs,
        started_at: dt.datetime,
        after: int,
    ) -> dict[str, int]:
        """Events of the selection per state (done: processed before ``started_at``)."""
        lows, highs, event_type, _handler, since, until = sel
        rows = await conn.fetch(
            self.replay_count, lows, highs, event_type, since, until, started_at, after
        )
        return {r["state"]: r["events"] for r in rows}

    async def replay_once(
        self, conn: asyncpg.Connection, sel: SelectionArgs, replay_id: int, limit: int
    ) -> tuple[int, bool]:
        """Replay one batch; return (events replayed, whether the replay is finished)."""
        row = await conn.fetchrow(self.replay_batch, *sel, replay_id, limit)
        if row is None:  # finished meanwhile (by another run of the same replay)
            return 0, True
        return row["replayed"], row["finished"]

    async def event_rows(
        self,
        conn: asyncpg.Connection,
        types: Sequence[str] | None,
        states: Sequence[str] | None,
        handler: str | None,
        handler_state: str | None,
        times: tuple[
            dt.datetime | None, dt.timedelta | None, dt.datetime | None, dt.timedelta | None
        ],
        key: str | None,
        queues: Sequence[str] | None,
        before_id: int | None,
        limit: int,
    ) -> list[Any]:
        """Events matching the filters (None = any), newest first, without payloads.

        ``times``: created at or after, at most this long ago, before, longer ago than.
        """
        # A fresh prepared statement always gets a custom plan, in which the `$n IS NULL`
        # tests fold away and partial indexes can match; through the statement cache the
        # sixth call on one connection may switch to a generic plan that cannot use them.
        # Dead events are listed newest first by walking outbox_dead_list_idx (0011), which
        # the usual plan finds by itself; only running ones still need the sorted plan.
        by_state = (
            states is not None
            and set(states) <= {"running"}
            and handler is None
            and handler_state is None
        )
        sql = self.list_events_by_state if by_state else self.list_events
        statement = await conn.prepare(sql)
        return list(
            await statement.fetch(
                types, states, handler, handler_state, *times, key, queues, before_id, limit
            )
        )

    async def event_row(self, conn: asyncpg.Connection, event_id: int) -> Any:
        """One event's row, payload included, or None."""
        return await conn.fetchrow(self.get_event, event_id)

    async def live_count_rows(self, conn: asyncpg.Connection, window: float) -> list[Any]:
        """Active counts per type and state, and events done in the last ``window`` s."""
        return list(await conn.fetch(self.live_counts, window))

    async def live_handler_rows(self, conn: asyncpg.Connection) -> list[Any]:
        """Handler states of unfinished events, per event type and handler."""
        return list(await conn.fetch(self.live_handlers))
