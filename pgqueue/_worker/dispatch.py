"""Per-event bookkeeping: which handlers run at this claim, and what the event becomes.

Pure logic, no I/O: the worker feeds it claimed rows and handler outcomes and writes what it
returns. Attempt arithmetic lives here (see HandlerRecord for why ``seen`` exists).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .._backoff import exhausted
from .._models import ANY_HANDLER, HandlerRecord, HandlerState
from .._queries import ClaimedRow
from .._registry import Handler

MAX_ERROR_CHARS = 2000


class Kind(Enum):
    """How one handler's turn at this claim ended."""

    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    INTERRUPTED = "interrupted"  # cancelled by shutdown: handed back, attempt refunded
    SKIPPED = "skipped"  # not due yet (its own backoff is later than a sibling's)
    DEFERRED = "deferred"  # its concurrency limit was full: back after ``delay``, no attempt
    CANCELLED = "cancelled"  # an operator cancelled the event: the database already says so


@dataclass(slots=True)
class Outcome:
    """The result of one handler at this claim."""

    kind: Kind
    attempts: int
    error: str | None = None
    delay: float = 0.0


@dataclass(slots=True)
class Completion:
    """What the completer writes for one event."""

    id: int
    token: uuid.UUID
    state: str
    delay: float = 0.0
    refund: int = 0
    handlers: str | None = None
    error: str | None = None
    deferred: bool = False  # back to pending only because a concurrency limit was full

    @property
    def happy(self) -> bool:
        """Done with no per-handler record to write: takes the cheap statement."""
        return self.state == "done" and self.handlers is None


@dataclass(slots=True)
class Delivery:
    """One claimed event while its handlers run."""

    row: ClaimedRow
    token: uuid.UUID
    claimed_at: float
    records: dict[str, HandlerRecord] | None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    waiting: int = 0
    lost: bool = False
    cancelled: bool = False  # an operator cancelled it: runners skip or cancel its handlers
    completed: bool = False  # outcome handed to the completer (its fenced write decides)
    queue: str = "default"  # the queue it was claimed from (relay destinations may name it)

    @property
    def db_now(self) -> float:
        """The database clock now, estimated from the claim's now() plus local elapsed time."""
        return self.row.db_now + (time.monotonic() - self.claimed_at)

    @property
    def elapsed(self) -> float:
        """Seconds since the event was created (database clock)."""
        return self.row.age + (time.monotonic() - self.claimed_at)


def error_text(exc: BaseException) -> str:
    """One line naming the exception, bounded in size."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text[:MAX_ERROR_CHARS]


def parse_records(raw: str | None) -> dict[str, HandlerRecord] | None:
    """The row's ``handlers`` JSON as records (None when the row has none)."""
    if raw is None:
        return None
    data: dict[str, Any] = json.loads(raw)
    return {name: HandlerRecord.from_json(value) for name, value in data.items()}


def prior_attempts(record: HandlerRecord | None, attempt: int, written_at: int = 0) -> int:
    """Attempts already made by a handler before this claim.

    Claims after the record was written that never wrote back (the worker died) count as
    failed attempts; that is what makes a handler that kills its process end dead. A handler
    with no record while its siblings have one was not registered when they were written
    (``written_at``, their newest ``seen``): only the claims since then count against it.
    """
    if record is None:
        return max(0, attempt - 1 - written_at)
    return record.attempts + max(0, attempt - 1 - record.seen)


def record_of(records: dict[str, HandlerRecord], name: str) -> HandlerRecord | None:
    """The handler's own record, else the wildcard record that covers it (see ANY_HANDLER)."""
    record = records.get(name)
    return record if record is not None else records.get(ANY_HANDLER)


def lost_claims(delivery: Delivery) -> bool:
    """True when an earlier claim of this event never wrote back (its worker died)."""
    if delivery.records is None:  # the common case, and every first delivery
        return delivery.row.attempt > 1
    records = delivery.records
    written_at = max((r.seen for r in records.values()), default=0)
    return delivery.row.attempt - 1 > written_at


def unrecorded(delivery: Delivery, handlers: tuple[Handler, ...]) -> list[tuple[Handler, int]]:
    """The handlers due at this claim whose outcome was never recorded, with their prior
    attempts: what a stopping worker hands back when no runner will record them any more."""
    records = delivery.records or {}
    written_at = max((r.seen for r in records.values()), default=0)
    rest: list[tuple[Handler, int]] = []
    for handler in handlers:
        if handler.name in delivery.outcomes:
            continue
        record = record_of(records, handler.name)
        if record is not None and record.state is not HandlerState.PENDING:
            continue
        rest.append((handler, prior_attempts(record, delivery.row.attempt, written_at)))
    return rest


def plan(delivery: Delivery, handlers: tuple[Handler, ...]) -> list[tuple[Handler, int]]:
    """Decide each handler's fate at this claim.

    Returns the handlers to run with their prior attempts; handlers that are finished, not yet
    due or out of attempts get their outcome recorded at once.
    """
    if delivery.records is None and delivery.row.attempt == 1:
        # The common case, first delivery: every handler runs, nothing to look up.
        delivery.waiting = len(handlers)
        return [(handler, 0) for handler in handlers]
    to_run: list[tuple[Handler, int]] = []
    records = delivery.records or {}
    attempt = delivery.row.attempt
    written_at = max((r.seen for r in records.values()), default=0)
    for handler in handlers:
        record = record_of(records, handler.name)
        if record is not None and record.state is not HandlerState.PENDING:
            continue
        prior = prior_attempts(record, attempt, written_at)
        if (
            record is not None
            and record.not_before is not None
            and (record.not_before > delivery.row.db_now)
        ):
            delivery.outcomes[handler.name] = Outcome(Kind.SKIPPED, prior)
            continue
        if prior > 0 and exhausted(handler.policy, prior, delivery.row.age):
            last = record.error if record is not None and record.error else None
            delivery.outcomes[handler.name] = Outcome(
                Kind.DEAD,
                prior,
                f"gave up after {prior} attempts; the last one never finished (worker killed "
                f"or lease lost)" + (f"; earlier error: {last}" if last else ""),
            )
            continue
        to_run.append((handler, prior))
    delivery.waiting = len(to_run)
    return to_run


def finish(delivery: Delivery, handlers: tuple[Handler, ...]) -> Completion:
    """Fold the outcomes of one claim into the row's new state."""
    row = delivery.row
    outcomes = delivery.outcomes
    if delivery.cancelled:
        # The cancel already wrote the row (state 'cancelled', lease cleared): nothing of this
        # claim is written; the completer only counts it.
        return Completion(row.id, delivery.token, "cancelled")
    # The happy path: every handler succeeded at its first try of this claim and nothing was
    # recorded before, so the row's state and attempt say everything; no record is written.
    # (A plain loop: cheaper than all() over a generator, on a path every event takes.)
    if delivery.records is None and len(outcomes) == len(handlers):
        attempt = row.attempt
        for o in outcomes.values():
            if o.kind is not Kind.DONE or o.attempts != attempt:
                break
        else:
            return Completion(row.id, delivery.token, "done")
    interrupted = any(o.kind is Kind.INTERRUPTED for o in outcomes.values())
    # Nothing ran at this claim (every handler deferred by its concurrency limit, or not due):
    # the claim gives its attempt back too, so waiting for a slot never uses up attempts.
    idle = bool(outcomes) and all(
        o.kind in (Kind.DEFERRED, Kind.SKIPPED) for o in outcomes.values()
    )
    # A handed-back event gets its attempt refunded, so records are written relative to it.
    seen = row.attempt - 1 if interrupted or idle else row.attempt
    now = delivery.db_now  # one reading for every record and the delay
    records = fold_records(delivery, handlers, seen=seen, now=now)
    return decide_state(delivery, handlers, records, now=now, interrupted=interrupted, idle=idle)


def fold_records(
    delivery: Delivery, handlers: tuple[Handler, ...], *, seen: int, now: float
) -> dict[str, HandlerRecord]:
    """The handler records after this claim: the stored ones with this claim's outcomes
    folded in (``seen``: the event attempt they are relative to; ``now``: database time)."""
    records = dict(delivery.records or {})
    for handler in handlers:
        outcome = delivery.outcomes.get(handler.name)
        old = records.get(handler.name)
        if outcome is None:
            if old is None and ANY_HANDLER in records:
                continue  # covered by the wildcard record, which stays as it is
            if old is None:  # never ran before and not run now: cannot happen, but be safe
                records[handler.name] = HandlerRecord(HandlerState.PENDING, 0, seen, updated_at=now)
            continue
        records[handler.name] = _record(outcome, old, seen, now)
    return records


def _record(outcome: Outcome, old: HandlerRecord | None, seen: int, now: float) -> HandlerRecord:
    """One handler's record after ``outcome`` (``old``: its record before this claim)."""
    if outcome.kind is Kind.DONE:
        return HandlerRecord(
            HandlerState.DONE, outcome.attempts, seen, error=outcome.error, updated_at=now
        )
    if outcome.kind is Kind.DEAD:
        return HandlerRecord(
            HandlerState.DEAD, outcome.attempts, seen, error=outcome.error, updated_at=now
        )
    if outcome.kind is Kind.RETRY:
        return HandlerRecord(
            HandlerState.PENDING,
            outcome.attempts,
            seen,
            error=outcome.error,
            not_before=now + outcome.delay,
            updated_at=now,
        )
    # INTERRUPTED, SKIPPED, DEFERRED: attempts unchanged, keep its error
    waits = outcome.kind is Kind.DEFERRED
    return HandlerRecord(
        HandlerState.PENDING,
        outcome.attempts,
        seen,
        error=old.error if old else None,
        not_before=now + outcome.delay if waits else (old.not_before if old else None),
        updated_at=now,
        deferred=(old.deferred if old else 0) + waits,
    )


def decide_state(
    delivery: Delivery,
    handlers: tuple[Handler, ...],
    records: dict[str, HandlerRecord],
    *,
    now: float,
    interrupted: bool,
    idle: bool,
) -> Completion:
    """The event's new state from its handlers' records: the completion row to write."""
    row, outcomes = delivery.row, delivery.outcomes
    body = json.dumps({name: r.to_json() for name, r in records.items()}, separators=(",", ":"))
    # Only this registry's handlers decide the event's fate: a record left by a handler that
    # was since removed from the code must not keep the event pending for ever.
    found = ((h.name, record_of(records, h.name)) for h in handlers)
    current = [(name, r) for name, r in found if r is not None]
    pending = [r for _, r in current if r.state is HandlerState.PENDING]
    last_error = None
    failing = [(n, r) for n, r in current if r.error and r.state is not HandlerState.DONE]
    if failing:
        name, record = failing[0]
        last_error = f"{name}: {record.error}"[:MAX_ERROR_CHARS]

    def completion(state: str, **fields: Any) -> Completion:
        return Completion(row.id, delivery.token, state, handlers=body, error=last_error, **fields)

    if interrupted:
        return completion("pending", refund=1)
    if pending:
        # Back only because a limit was full (no failure): counted as deferred, not retried.
        deferred = any(o.kind is Kind.DEFERRED for o in outcomes.values()) and not any(
            o.kind is Kind.RETRY for o in outcomes.values()
        )
        delay = min(max(0.0, (r.not_before or now) - now) for r in pending)
        return completion("pending", delay=delay, refund=int(idle), deferred=deferred)
    if any(r.state is HandlerState.DEAD for _, r in current):
        return completion("dead")
    if any(r.state is HandlerState.DISCARDED for _, r in current):
        # An operator gave up on a handler (pgqueue discard); the rest are done.
        return completion("discarded")
    return Completion(row.id, delivery.token, "done", handlers=body)
