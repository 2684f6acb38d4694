"""Statements of ordered handlers (issue 15; sql/0017_ordering.sql, pgqueue/_worker/ordering.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ._base import Area

# For `pgqueue status`, `events list --blocked` and the metric: the keys held back, i.e. keys
# whose oldest unfinished event is dead or waiting out a failure's retry (last_error set)
# while later events of the key wait. $1 limit. (Per key, not per handler: which handler a
# dead event blocks is in its records, shown by `pgqueue events show`.) The WHERE clause of
# `h` is outbox_ordering_failed_idx's predicate: only failed keyed events are read.
HELD_BACK = """
FROM {s}.outbox AS h
WHERE h.ordering_key IS NOT NULL AND h.state IN ('pending', 'running', 'dead')
  AND (h.state = 'dead' OR h.last_error IS NOT NULL)
  AND NOT EXISTS (SELECT 1 FROM {s}.outbox AS e
                  WHERE e.ordering_key = h.ordering_key AND e.id < h.id
                    AND e.state IN ('pending', 'running', 'dead'))
  AND EXISTS (SELECT 1 FROM {s}.outbox AS l
              WHERE l.ordering_key = h.ordering_key AND l.id > h.id
                AND l.state IN ('pending', 'running', 'dead'))
"""


class OrderingQueries(Area):
    """The ordering statements, for one schema."""

    # $1 event ids, $2 handler names, $3 the handler's event types (space-separated: a type name
    # never holds a space, see _names.py), $4 the events' ordering keys. One row per unit that must
    # wait: its ordinal, and the first earlier event of its key that this handler has not finished
    # (its id, its state, seconds until it is due). A unit without a row is its key's head for
    # that handler and may run.
    # "Not finished" = the event is pending, running or dead (outbox_ordering_idx holds exactly
    # those keyed rows) and the handler's record (or the wildcard record of a replay) is not done
    # or discarded; a handler with no record on such an event has not run it yet.
    # Each unit is one descent of outbox_ordering_idx (ordering_key = k AND id < e): a key whose
    # earlier events are all finished has no entries there, so the probe finds nothing at once.
    HEADS = """
SELECT u.n::int, b.id, b.state::text,
       extract(epoch FROM b.run_at - now())::float8
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
     WITH ORDINALITY AS u(id, handler, types, okey, n)
CROSS JOIN LATERAL (
    SELECT o.id, o.state, o.run_at FROM {s}.outbox AS o
    WHERE o.ordering_key = u.okey AND o.id < u.id
      AND o.state IN ('pending', 'running', 'dead')
      AND o.event_type = ANY(string_to_array(u.types, ' '))
      AND COALESCE(o.handlers -> u.handler ->> 'state', o.handlers -> '*' ->> 'state',
                   'pending') NOT IN ('done', 'discarded')
    ORDER BY o.id
    LIMIT 1
) AS b
"""

    async def heads(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        handlers: Sequence[str],
        types: Sequence[str],
        keys: Sequence[str],
    ) -> list[tuple[int, int, str, float]]:
        """(unit index from 0, blocking event id, its state, seconds until it is due) of the
        units that must wait for an earlier event of their key."""
        rows = await conn.fetch(self.HEADS, ids, handlers, types, keys)
        return [(r[0] - 1, r[1], r[2], r[3]) for r in rows]

    # $1 limit. The held-back keys (HELD_BACK), oldest first, with how many events wait behind.
    BLOCKED_KEYS = (
        """
SELECT h.ordering_key, h.id, h.state::text, h.event_type, h.last_error,
       (SELECT count(*) FROM {s}.outbox AS l
        WHERE l.ordering_key = h.ordering_key AND l.id > h.id
          AND l.state IN ('pending', 'running', 'dead'))::bigint AS waiting
"""
        + HELD_BACK
        + """
ORDER BY h.id
LIMIT $1
"""
    )

    async def blocked_keys(self, conn: asyncpg.Connection, limit: int) -> list[Any]:
        """(ordering_key, id, state, event_type, last_error, waiting) of held-back keys."""
        return list(await conn.fetch(self.BLOCKED_KEYS, limit))

    # $1 limit. How many keys are held back (for the metric), counting up to $1.
    BLOCKED_COUNT = "SELECT count(*)::int FROM (SELECT 1 " + HELD_BACK + " LIMIT $1) AS b"

    async def blocked_count(self, conn: asyncpg.Connection, limit: int) -> int:
        """How many ordering keys are held back, counted up to ``limit``."""
        count: int = await conn.fetchval(self.BLOCKED_COUNT, limit)
        return count
