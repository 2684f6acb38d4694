"""The typed calls of the producer and the worker: insert, claim, complete, leases, effects.

The producer's calls (inserts, effects) are plans (see ``plans.py``): every driver that can
enqueue runs the same ones. The worker's calls are asyncpg only.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from .plans import Plan
from .statements import Statements


class ClaimedRow(NamedTuple):
    """A row returned by the claim statement.

    A named tuple, built straight from the record's values: a frozen dataclass's __init__
    (one object.__setattr__ per field) cost 0.87 us per claimed row, this 0.2 us.
    """

    id: int
    event_type: str
    payload: str
    attempt: int
    handlers: str | None
    created_at: dt.datetime
    db_now: float
    age: float
    headers: str | None = None  # JSON text: the producer's trace context, if any
    ordering_key: str | None = None  # the producer's ordering key (sql/0014), if any
    behind: bool = False  # an earlier event of its key is unfinished (see CLAIM)


class CoreCalls(Statements):
    """One method per statement of ``core``: what producers and workers run."""

    def insert_event(
        self,
        event_type: str,
        payload_json: str,
        run_at: dt.datetime | None,
        key: str | None,
        queue: str,
        priority: int = 0,
        headers: str | None = None,
        ordering_key: str | None = None,
    ) -> Plan[int]:
        """Insert one event; with a key already used, return the existing event's id.

        ``headers`` (JSON text) and ``ordering_key`` are stored with the event; without them
        the statement has neither column at all.
        """
        args = (event_type, payload_json, run_at, key, queue, priority)
        rows = yield (
            (self.insert_one, args)
            if headers is None and ordering_key is None
            else (self.insert_one_headers, (*args, headers, ordering_key))
        )
        if not rows:
            # The key was already used: its event's id, through the SECURITY DEFINER lookup
            # (the producer may not read keys).
            rows = [(r[1],) for r in (yield (self.ids_by_keys, ([key],)))]
            if not rows:  # the conflicting row was deleted between the two statements
                raise RuntimeError(f"idempotency key {key!r} conflicted but no row holds it")
        new_id: int = rows[0][0]
        return new_id

    def insert_events(
        self,
        types: Sequence[str],
        payloads: Sequence[str],
        run_ats: Sequence[dt.datetime | None],
        keys: Sequence[str | None],
        queues: Sequence[str],
        priorities: Sequence[int],
        headers: str | None = None,
        ordering_keys: Sequence[str | None] | None = None,
    ) -> Plan[list[int]]:
        """Insert many events in one statement; return ids in input order.

        ``headers`` (JSON text), when given, is stored with every event of the chunk;
        ``ordering_keys``, when given, one per event.
        """
        args = (types, payloads, run_ats, keys, queues, priorities)
        rows = list(
            (yield (self.insert_many, args))
            if headers is None and ordering_keys is None
            else (yield (self.insert_many_headers, (*args, headers, ordering_keys)))
        )
        # Identity values are assigned in insertion order, which follows ORDER BY n, so the
        # inserted rows sorted by id line up with the input rows when none was skipped.
        inserted = sorted(r[0] for r in rows)
        if len(inserted) == len(types):
            return inserted
        # Some keys were already used (or repeated in the chunk): every keyed row takes its
        # key's id (the producer may not read keys, so it asks the SECURITY DEFINER lookup),
        # the others the remaining inserted ids in order.
        found = yield (self.ids_by_keys, ([k for k in keys if k is not None],))
        by_key: dict[str, int] = {r[0]: r[1] for r in found}
        keyed = set(by_key.values())
        plain = iter(i for i in inserted if i not in keyed)
        return [by_key[key] if key is not None else next(plain) for key in keys]

    def insert_plain_events(self, types: Sequence[str], payloads: Sequence[str]) -> Plan[list[int]]:
        """Insert events with default run_at, queue and no key; return ids in input order.

        Identity values are assigned in insertion order, which follows the array order.
        """
        return sorted(r[0] for r in (yield (self.insert_plain, (types, payloads))))

    async def claim_batch(
        self,
        conn: asyncpg.Connection,
        queue: str,
        event_types: Sequence[str],
        limit: int,
        token: uuid.UUID,
        worker_id: str,
        lease_seconds: float,
        floor: float = -math.inf,
    ) -> list[ClaimedRow]:
        """Claim up to ``limit`` ready events with ``run_at >= floor`` under ``token``."""
        rows = await conn.fetch(
            self.claim, queue, event_types, limit, token, worker_id, lease_seconds, floor
        )
        make = ClaimedRow._make
        return [make(r) for r in rows]

    async def complete_done_batch(
        self, conn: asyncpg.Connection, ids: Sequence[int], token: uuid.UUID
    ) -> list[int]:
        """Mark events of one claim done (fenced by its token); return the ids updated."""
        return [r[0] for r in await conn.fetch(self.complete_done, ids, token)]

    async def complete_batch(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        tokens: Sequence[uuid.UUID],
        states: Sequence[str],
        delays: Sequence[float],
        refunds: Sequence[int],
        handlers: Sequence[str | None],
        errors: Sequence[str | None],
    ) -> list[int]:
        """Record any outcome (fenced); return the ids actually updated."""
        rows = await conn.fetch(
            self.complete, ids, tokens, states, delays, refunds, handlers, errors
        )
        return [r[0] for r in rows]

    async def extend_leases(
        self,
        conn: asyncpg.Connection,
        ids: Sequence[int],
        tokens: Sequence[uuid.UUID],
        lease_seconds: float,
    ) -> list[int]:
        """Renew the leases still held; return their ids (renewed or locked by another
        session this round: still ours either way)."""
        return [r[0] for r in await conn.fetch(self.heartbeat, ids, tokens, lease_seconds)]

    async def rescue_expired(
        self, conn: asyncpg.Connection, held: Sequence[uuid.UUID] = (), limit: int = 1000
    ) -> list[Any]:
        """Return expired leases to pending, except the ``held`` lease tokens (the caller's:
        it is alive, it runs them); return (id, event_type, leased_by) rows."""
        async with conn.transaction():
            await conn.execute(self.rescue_plan)
            return list(await conn.fetch(self.rescue, limit, list(held)))

    async def seconds_until_due(
        self, conn: asyncpg.Connection, queue: str, event_types: Sequence[str]
    ) -> float | None:
        """Seconds until the next pending event falls due (None: nothing in the future)."""
        value: float | None = await conn.fetchval(self.next_due, queue, event_types)
        return value

    async def committing_skippers(
        self,
        conn: asyncpg.Connection,
        queues: Sequence[str],
        among: Sequence[str] | None = None,
    ) -> list[str]:
        """The producer transactions that skipped their NOTIFY on ``queues`` and are still
        committing (of ``among``, when given): their virtual transaction ids."""
        found: list[str] = await conn.fetchval(self.skippers, self.skippers_key, queues, among)
        return found

    def record_effect_once(self, event_id: int, handler: str) -> Plan[bool]:
        """Record (event, handler) in the effects ledger; False when it was already there."""
        return bool((yield (self.record_effect, (event_id, handler))))
