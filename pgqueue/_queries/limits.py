"""Statements of handler concurrency limits (sql/0013): the limits table and its slots."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ._base import Area


class LimitQueries(Area):
    """The limits' statements, for one schema."""

    # $1 handler names (sorted: two workers starting at once lock the rows in the same order),
    # $2 their concurrency in the registry. The operator's `override` is never written here, and an
    # unchanged value writes nothing (the trigger that resizes the slots does not fire).
    LIMITS_WRITE = """
INSERT INTO {s}.handler_limits AS l (handler, concurrency)
SELECT h, c FROM unnest($1::text[], $2::int[]) AS i(h, c)
ON CONFLICT (handler) DO UPDATE SET concurrency = EXCLUDED.concurrency, updated_at = now()
WHERE l.concurrency IS DISTINCT FROM EXCLUDED.concurrency
"""

    async def limits_write(
        self, conn: asyncpg.Connection, names: Sequence[str], concurrency: Sequence[int]
    ) -> None:
        """Store the registry's limits (the operator's overrides stay as they are)."""
        await conn.execute(self.LIMITS_WRITE, names, concurrency)

    # $1 handler names
    LIMITS_READ = """
SELECT handler, concurrency, override FROM {s}.handler_limits
WHERE handler = ANY($1::text[]) ORDER BY handler
"""

    async def limits_read(self, conn: asyncpg.Connection, names: Sequence[str]) -> list[Any]:
        """(handler, concurrency, override) rows of these handlers."""
        return list(await conn.fetch(self.LIMITS_READ, names))

    # $1 handler names, $2 slots wanted per handler, $3 slot token, $4 worker id, $5 lease seconds.
    # One statement takes slots of several handlers: per handler, a LATERAL pick of up to the wanted
    # number of free (or expired) slots, SKIP LOCKED so that workers never wait on each other (a
    # slot another worker is taking right now counts as taken). Returns (handler, slot) taken.
    SLOTS_ACQUIRE = """
UPDATE {s}.handler_slots AS s
SET lease_token = $3, leased_by = $4, lease_expires_at = now() + make_interval(secs => $5)
FROM unnest($1::text[], $2::int[]) AS w(handler, wanted)
CROSS JOIN LATERAL (
    SELECT f.handler, f.slot FROM {s}.handler_slots AS f
    WHERE f.handler = w.handler AND (f.lease_token IS NULL OR f.lease_expires_at < now())
    ORDER BY f.slot
    LIMIT w.wanted
    FOR UPDATE SKIP LOCKED
) AS p
WHERE s.handler = p.handler AND s.slot = p.slot
RETURNING s.handler, s.slot
"""

    async def slots_acquire(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        wanted: Sequence[int],
        token: uuid.UUID,
        worker_id: str,
        lease_seconds: float,
    ) -> list[tuple[str, int]]:
        """Take up to ``wanted`` free slots per handler; return the (handler, slot) taken."""
        rows = await conn.fetch(self.SLOTS_ACQUIRE, names, wanted, token, worker_id, lease_seconds)
        return [(r[0], r[1]) for r in rows]

    # $1 handler names, $2 slots, $3 slot token
    SLOTS_RELEASE = """
UPDATE {s}.handler_slots AS s
SET lease_token = NULL, leased_by = NULL, lease_expires_at = NULL
FROM unnest($1::text[], $2::int[]) AS r(handler, slot)
WHERE s.handler = r.handler AND s.slot = r.slot AND s.lease_token = $3
"""

    async def slots_release(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
    ) -> None:
        """Give back these slots (fenced by the token)."""
        await conn.execute(self.SLOTS_RELEASE, names, slots, token)

    # $1 handler names, $2 slots, $3 slot token, $4 lease seconds. Only the slots the worker knows
    # it holds: a slot taken by a statement whose answer was lost is left to expire.
    SLOTS_RENEW = """
UPDATE {s}.handler_slots AS s
SET lease_expires_at = now() + make_interval(secs => $4)
FROM unnest($1::text[], $2::int[]) AS r(handler, slot)
WHERE s.handler = r.handler AND s.slot = r.slot AND s.lease_token = $3
"""

    async def slots_renew(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of these slots (fenced by the token)."""
        await conn.execute(self.SLOTS_RENEW, names, slots, token, lease_seconds)

    # $1 slot token. At worker exit: everything it still holds.
    SLOTS_RELEASE_ALL = """
UPDATE {s}.handler_slots
SET lease_token = NULL, leased_by = NULL, lease_expires_at = NULL
WHERE lease_token = $1
"""

    async def slots_release_all(self, conn: asyncpg.Connection, token: uuid.UUID) -> None:
        """Give back every slot held under ``token``."""
        await conn.execute(self.SLOTS_RELEASE_ALL, token)

    # For `pgqueue limits`: every limit with the slots held now (a slot whose lease expired is
    # free), and the rates (sql/0018).
    LIMITS_LIST = """
SELECT l.handler, l.concurrency, l.override,
       (SELECT count(*) FROM {s}.handler_slots AS s
        WHERE s.handler = l.handler AND s.lease_expires_at > now())::int AS running,
       l.rate::text, l.rate_override::text, l.rate_per_key
FROM {s}.handler_limits AS l
ORDER BY l.handler
"""

    async def limits_list(self, conn: asyncpg.Connection) -> list[Any]:
        """(handler, concurrency, override, running) of every limit."""
        return list(await conn.fetch(self.LIMITS_LIST))

    # $1 handler, $2 override (NULL: back to the registry's value). The trigger resizes the slots.
    LIMIT_OVERRIDE = """
UPDATE {s}.handler_limits SET override = $2, updated_at = now()
WHERE handler = $1
RETURNING handler
"""

    async def limit_override(
        self, conn: asyncpg.Connection, handler: str, override: int | None
    ) -> bool:
        """Set (or with None clear) the operator's override; False when no such limit."""
        return await conn.fetchval(self.LIMIT_OVERRIDE, handler, override) is not None
