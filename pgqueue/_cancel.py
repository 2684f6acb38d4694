"""Cancelling pending events before any worker takes them.

There is no 'cancelled' state yet: a cancelled event becomes ``discarded`` (the state of
events given up on for good: kept for audit, never claimed, deleted by ``prune`` with
``include_discarded``), with the reason as its last error.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ._errors import ConfigurationError
from ._queries import queries_for
from ._settings import DEFAULT_SCHEMA

MAX_ID = 2**63 - 1
MAX_REASON = 500


async def cancel_pending(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    *,
    reason: str,
    schema: str = DEFAULT_SCHEMA,
) -> list[int]:
    """Discard the pending events among ``ids``; return those changed, sorted.

    Running events are left alone (a worker is already running their handlers; a handler
    can :class:`pgqueue.Discard` itself), and so are done, dead and discarded ones.
    """
    if not ids:
        raise ConfigurationError("name the pending events to cancel by id")
    if any(not 1 <= i <= MAX_ID for i in ids):
        raise ConfigurationError(f"event ids are between 1 and {MAX_ID}")
    if not reason.strip():
        raise ConfigurationError("say why the events are cancelled (kept as their error)")
    return await queries_for(schema).dashboard.cancel_pending(conn, list(ids), reason[:MAX_REASON])
