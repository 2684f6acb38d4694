"""The reference of issue 4: a minimal hand-written asyncpg loop, the speed of the database.

Claim 100 rows (``FOR UPDATE SKIP LOCKED`` in a transaction), run the handler on each, mark
them processed, commit; one connection, its own table. No leases, no fencing, no retries, no
per-handler state, no NOTIFY, no crash recovery: nothing a queue must have beyond the two
statements. It measures how fast this machine's PostgreSQL can hand out and close events
through asyncpg, the ceiling a real queue's drain is compared with (``drain.minimal``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import asyncpg

TABLE = "bench_minimal"

DDL = f"""
CREATE TABLE {TABLE} (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX {TABLE}_ready_idx ON {TABLE} (id) WHERE processed_at IS NULL;
"""
INSERT_ONE = f"INSERT INTO {TABLE} (payload) VALUES ($1::jsonb) RETURNING id"
INSERT = f"INSERT INTO {TABLE} (payload) SELECT p::jsonb FROM unnest($1::text[]) AS u(p)"
CLAIM = f"""
SELECT id, payload, created_at FROM {TABLE} WHERE processed_at IS NULL
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK = f"UPDATE {TABLE} SET processed_at = now() WHERE id = ANY($1::bigint[])"
REMAINING = f"SELECT count(*) FROM {TABLE} WHERE processed_at IS NULL"
DONE = f"SELECT count(*) FROM {TABLE} WHERE processed_at IS NOT NULL"


async def install(conn: asyncpg.Connection) -> None:
    """Create the reference table (in the benchmark's template database)."""
    await conn.execute(DDL)


async def enqueue(conn: asyncpg.Connection, payload: dict[str, int]) -> int:
    """Insert one payload; return its id."""
    event_id: int = await conn.fetchval(INSERT_ONE, json.dumps(payload))
    return event_id


async def enqueue_many(conn: asyncpg.Connection, payloads: list[dict[str, int]]) -> None:
    """Insert ``payloads`` in one statement."""
    await conn.execute(INSERT, [json.dumps(p) for p in payloads])


async def drain(
    conn: asyncpg.Connection, handler: Callable[[int, dt.datetime], None], batch_size: int
) -> int:
    """Claim, handle and mark batches until none is left; return the events handled."""
    handled = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(CLAIM, batch_size)
            if not rows:
                return handled
            for row in rows:
                json.loads(row["payload"])  # as a queue hands the handler a decoded payload
                handler(row["id"], row["created_at"])
            await conn.execute(MARK, [row["id"] for row in rows])
        handled += len(rows)
