"""Statements of per-handler rate limits (sql/0018_rates.sql, pgqueue/_worker/rates.py)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ._base import Area


class RateQueries(Area):
    """The rate statements, for one schema."""

    # $1 handler names (sorted), $2 their rates in the registry ('100/s'), $3 per key. The
    # operator's rate_override is never written here; an unchanged row is not written at all.
    RATES_WRITE = """
INSERT INTO {s}.handler_limits AS l (handler, rate, rate_per_key)
SELECT h, r, k FROM unnest($1::text[], $2::text[], $3::bool[]) AS i(h, r, k)
ON CONFLICT (handler) DO UPDATE
SET rate = EXCLUDED.rate, rate_per_key = EXCLUDED.rate_per_key, updated_at = now()
WHERE (l.rate, l.rate_per_key) IS DISTINCT FROM (EXCLUDED.rate, EXCLUDED.rate_per_key)
"""

    async def rates_write(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        rates: Sequence[str],
        per_key: Sequence[bool],
    ) -> None:
        """Store the registry's rates (the operator's overrides stay as they are)."""
        await conn.execute(self.RATES_WRITE, names, rates, per_key)

    # $1 handler names, $2 bucket keys ('' = the handler's own), $3 runs wanted. Creates missing
    # buckets full (one second of tokens, at least one), then takes up to the wanted number from
    # each, refilled by the time since its last take. FOR UPDATE: the refill reads the bucket's
    # newest version (a concurrent take by another worker is waited for, never double-spent).
    # Returns per bucket the runs granted, the rate in force (per second) and the tokens left.
    # An existing bucket is locked at once (DO UPDATE ... WHERE false updates nothing but locks
    # the row): RATES_PRUNE skips locked buckets, so it cannot delete one between this INSERT
    # and the take, which would then find no bucket and let every wanted run through.
    RATES_ENSURE = """
INSERT INTO {s}.rate_buckets AS b (handler, key, tokens)
SELECT w.handler, w.key,
       greatest(1.0, {s}.rate_per_second(COALESCE(l.rate_override, l.rate)))
FROM unnest($1::text[], $2::text[]) AS w(handler, key)
JOIN {s}.handler_limits AS l ON l.handler = w.handler
WHERE COALESCE(l.rate_override, l.rate) IS NOT NULL
ON CONFLICT (handler, key) DO UPDATE SET tokens = b.tokens WHERE false
"""

    RATES_TAKE = """
UPDATE {s}.rate_buckets AS b
SET tokens = c.avail - c.granted, updated_at = now()
FROM (
    SELECT w.handler, w.key, r.per_s, a.avail, least(w.wanted, floor(a.avail))::int AS granted
    FROM unnest($1::text[], $2::text[], $3::int[]) AS w(handler, key, wanted)
    JOIN LATERAL (
        SELECT {s}.rate_per_second(COALESCE(l.rate_override, l.rate)) AS per_s
        FROM {s}.handler_limits AS l
        WHERE l.handler = w.handler AND COALESCE(l.rate_override, l.rate) IS NOT NULL
    ) AS r ON true
    JOIN LATERAL (
        SELECT least(greatest(1.0, r.per_s),
                     f.tokens + extract(epoch FROM now() - f.updated_at)::float8 * r.per_s)
                   AS avail
        FROM {s}.rate_buckets AS f
        WHERE f.handler = w.handler AND f.key = w.key
        FOR UPDATE
    ) AS a ON true
) AS c
WHERE b.handler = c.handler AND b.key = c.key
RETURNING b.handler, b.key, c.granted, c.per_s, b.tokens
"""

    async def rates_take(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        keys: Sequence[str],
        wanted: Sequence[int],
    ) -> dict[tuple[str, str], tuple[int, float, float]]:
        """(handler, key) -> (runs granted, rate per second, tokens left) of each bucket.

        RATES_ENSURE first creates the buckets not there yet, in the same transaction.
        """
        async with conn.transaction():
            await conn.execute(self.RATES_ENSURE, names, keys)
            rows = await conn.fetch(self.RATES_TAKE, names, keys, wanted)
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}

    # $1 handler, $2 rate override (NULL: back to the registry's rate).
    RATE_OVERRIDE = """
UPDATE {s}.handler_limits SET rate_override = $2::text, updated_at = now()
WHERE handler = $1 AND (rate IS NOT NULL OR $2::text IS NOT NULL)
RETURNING handler
"""

    async def rate_override(self, conn: asyncpg.Connection, handler: str, rate: str | None) -> bool:
        """Set (or with None clear) the operator's rate; False when no such handler row."""
        return await conn.fetchval(self.RATE_OVERRIDE, handler, rate) is not None

    # $1 rows at most. Deletes per-key buckets (rate_per_key: one per ordering key ever seen)
    # that are full again: idle long enough to have refilled, so a bucket made afresh at the
    # next take (full) is the same bucket. Also those of handlers that have no rate any more.
    # Never the handler's own bucket (key ''): one row per handler. SKIP LOCKED: a bucket being
    # taken from is in use. No index on updated_at: every take updates it, and an index on it
    # would cost the takes their HOT updates; a prune reads the table once.
    RATES_PRUNE = """
WITH gone AS (
    DELETE FROM {s}.rate_buckets AS b
    WHERE (b.handler, b.key) IN (
        SELECT f.handler, f.key
        FROM {s}.rate_buckets AS f
        LEFT JOIN {s}.handler_limits AS l ON l.handler = f.handler
        CROSS JOIN LATERAL (
            SELECT {s}.rate_per_second(COALESCE(l.rate_override, l.rate)) AS per_s
        ) AS r
        WHERE f.key <> ''
          AND (r.per_s IS NULL
               OR f.tokens + extract(epoch FROM now() - f.updated_at)::float8 * r.per_s
                  >= greatest(1.0, r.per_s))
        LIMIT $1
        FOR UPDATE OF f SKIP LOCKED)
    RETURNING 1
)
SELECT count(*)::int FROM gone
"""

    async def rates_prune(self, conn: asyncpg.Connection, limit: int) -> int:
        """Delete up to ``limit`` per-key buckets that are full again; return how many."""
        deleted: int = await conn.fetchval(self.RATES_PRUNE, limit)
        return deleted
