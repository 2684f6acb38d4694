"""The typed calls of per-handler concurrency limits and their slots."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from .statements import Statements


class LimitCalls(Statements):
    """One method per statement of ``limits``: the limits and the slots that enforce them."""

    async def write_limits(
        self, conn: asyncpg.Connection, names: Sequence[str], concurrency: Sequence[int]
    ) -> None:
        """Store the registry's limits (the operator's overrides stay as they are)."""
        await conn.execute(self.limits_write, names, concurrency)

    async def limit_rows(self, conn: asyncpg.Connection, names: Sequence[str]) -> list[Any]:
        """(handler, concurrency, override) rows of these handlers."""
        return list(await conn.fetch(self.limits_read, names))

    async def acquire_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        wanted: Sequence[int],
        token: uuid.UUID,
        worker_id: str,
        lease_seconds: float,
    ) -> list[tuple[str, int]]:
        """Take up to ``wanted`` free slots per handler; return the (handler, slot) taken."""
        rows = await conn.fetch(self.slots_acquire, names, wanted, token, worker_id, lease_seconds)
        return [(r[0], r[1]) for r in rows]

    async def release_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
    ) -> None:
        """Give back these slots (fenced by the token)."""
        await conn.execute(self.slots_release, names, slots, token)

    async def renew_slots(
        self,
        conn: asyncpg.Connection,
        names: Sequence[str],
        slots: Sequence[int],
        token: uuid.UUID,
        lease_seconds: float,
    ) -> None:
        """Extend the leases of these slots (fenced by the token)."""
        await conn.execute(self.slots_renew, names, slots, token, lease_seconds)

    async def release_all_slots(self, conn: asyncpg.Connection, token: uuid.UUID) -> None:
        """Give back every slot held under ``token``."""
        await conn.execute(self.slots_release_all, token)

    async def limit_list(self, conn: asyncpg.Connection) -> list[Any]:
        """(handler, concurrency, override, running) of every limit."""
        return list(await conn.fetch(self.limits_list))

    async def override_limit(
        self, conn: asyncpg.Connection, handler: str, override: int | None
    ) -> bool:
        """Set (or with None clear) the operator's override; False when no such limit."""
        return await conn.fetchval(self.limit_override, handler, override) is not None
