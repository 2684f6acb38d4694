"""Models and enums that mirror the SQL schema. No I/O here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Event priorities: higher runs first; the range mirrors the outbox_priority_range constraint
# (small on purpose: the claim probes every level, see CLAIM in _queries/core.py).
PRIORITY_MIN, PRIORITY_MAX = -10, 10


class EventState(StrEnum):
    """The states of an outbox row (mirrors the ``outbox_state_check`` constraint).

    ``discarded``: a dead event an operator gave up on (``pgqueue discard``); never claimed.
    ``cancelled``: an operator cancelled it while pending or running (``pgqueue cancel``);
    never claimed again, its running handlers are cancelled at their worker's next heartbeat.
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """True for the states an event never leaves by itself (what pgqueue.wait waits for)."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {EventState.DONE, EventState.DEAD, EventState.DISCARDED, EventState.CANCELLED}
)


class HandlerState(StrEnum):
    """The state of one handler for one event, kept in ``outbox.handlers``."""

    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"  # mirrors EventState; no handler record is written with it


# The record key that stands for "every handler without a record of its own". `pgqueue replay
# --handler X` and `pgqueue retry --handler X` write it as done next to X's pending record, so
# only X runs, even though neither command knows which handlers the workers register.
ANY_HANDLER = "*"


@dataclass(slots=True)
class HandlerRecord:
    """One handler's record for one event, stored in the row's ``handlers`` JSON.

    ``seen`` is the event's attempt counter when this record was written: any claims after it
    that never wrote back (a worker killed mid-handler) count as failed attempts, so a handler
    that kills its process every time still ends dead. ``deferred`` counts the claims in a row
    at which the handler's concurrency limit was full (it grows the deferral's backoff).
    """

    state: HandlerState
    attempts: int
    seen: int
    error: str | None = None
    not_before: float | None = None
    updated_at: float | None = None
    deferred: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HandlerRecord:
        """Build from the stored JSON object (tolerates missing optional keys)."""
        return cls(
            state=HandlerState(data.get("state", HandlerState.PENDING)),
            attempts=int(data.get("attempts", 0)),
            seen=int(data.get("seen", 0)),
            error=data.get("error"),
            not_before=data.get("not_before"),
            updated_at=data.get("updated_at"),
            deferred=int(data.get("deferred", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the row; optional keys only when set."""
        out: dict[str, Any] = {
            "state": self.state.value,
            "attempts": self.attempts,
            "seen": self.seen,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.not_before is not None:
            out["not_before"] = self.not_before
        if self.updated_at is not None:
            out["updated_at"] = self.updated_at
        if self.deferred:
            out["deferred"] = self.deferred
        return out


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler is told about the delivery it is running.

    ``key`` is the stable ``"<event id>:<handler name>"`` string for idempotent effects, and
    ``pool`` is the worker's connection pool for handler work, ``schema`` the worker's pgqueue
    schema (see :func:`pgqueue.once`).
    """

    event_id: int
    event_type: str
    handler: str
    attempt: int
    created_at: dt.datetime
    pool: Any = None
    schema: str = "pgqueue"

    @property
    def key(self) -> str:
        """The idempotency key of this (event, handler) pair."""
        return f"{self.event_id}:{self.handler}"


# The worker builds one Context per handler run. A frozen dataclass's __init__ sets each field
# with object.__setattr__ (0.75 us for these 7); setting the slots through their descriptors
# builds the same frozen object in 0.40 us. new_context must list the fields in order; a unit
# test compares it with Context(...).
_CONTEXT_SLOTS = tuple(
    Context.__dict__[name].__set__
    for name in ("event_id", "event_type", "handler", "attempt", "created_at", "pool", "schema")
)


def new_context(
    event_id: int,
    event_type: str,
    handler: str,
    attempt: int,
    created_at: dt.datetime,
    pool: Any,
    schema: str,
) -> Context:
    """``Context(...)`` with these values, built faster (the worker's hot path)."""
    ctx: Context = object.__new__(Context)
    s0, s1, s2, s3, s4, s5, s6 = _CONTEXT_SLOTS
    s0(ctx, event_id)
    s1(ctx, event_type)
    s2(ctx, handler)
    s3(ctx, attempt)
    s4(ctx, created_at)
    s5(ctx, pool)
    s6(ctx, schema)
    return ctx


class Event(BaseModel):
    """An event to enqueue with :func:`pgqueue.enqueue_many`."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    event_type: str
    payload: dict[str, Any] | BaseModel
    run_at: dt.datetime | None = None
    idempotency_key: str | None = None
    queue: str = "default"
    # Higher runs first (see enqueue); -10..10.
    priority: int = Field(default=0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    # Ordered handlers run one key's events one at a time, in id order (docs/ordering.md).
    ordering_key: str | None = None


@dataclass
class WorkerStats:
    """Counters of one worker run (for logs, burst summaries and tests)."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    dead: int = 0
    handed_back: int = 0
    deferred: int = 0  # back to pending only because a handler's concurrency limit was full
    lost_leases: int = 0
    cancelled: int = 0  # an operator cancelled them while they ran (pgqueue cancel)
    rescued: int = 0
    loop_stalls: int = 0
