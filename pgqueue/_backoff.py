"""Retry arithmetic on tenacity primitives, and classification of transient errors.

A handler's :class:`RetryPolicy` is plain tenacity: ``stop`` decides when to give up,
``wait`` how long to wait before the next attempt, ``retry`` which exceptions are worth
retrying at all. pgqueue evaluates them itself (rather than wrapping the handler in
``tenacity.retry``) because an attempt may span processes: the attempt number comes from the
database, and a wait longer than ``inline_max_wait`` becomes a durable ``run_at`` instead of a
sleep, so a restart never loses a retry.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import tenacity
from tenacity import (
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._errors import Discard

DEFAULT_MAX_ATTEMPTS = 10


def _default_stop() -> stop_base:
    return stop_after_attempt(DEFAULT_MAX_ATTEMPTS)


def _default_wait() -> wait_base:
    # 0.5 s, 1 s (both in process), then 2, 4, 8 ... capped at 5 minutes, with jitter so that
    # a burst of failures does not come back as a burst.
    return wait_exponential_jitter(multiplier=0.5, max=300, jitter=0.25)


def _default_retry() -> retry_base:
    return retry_if_not_exception_type(Discard)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed handler is tried again.

    ``inline_max_wait``: waits up to this many seconds (default 1.5: the default policy's
    0.5 s and 1 s waits plus their jitter) happen in process (quick retries under
    the same lease); longer ones are stored as the event's ``run_at`` and survive restarts.
    """

    stop: stop_base = field(default_factory=_default_stop)
    wait: wait_base = field(default_factory=_default_wait)
    retry: retry_base = field(default_factory=_default_retry)
    inline_max_wait: float = 1.5


@dataclass(frozen=True)
class Verdict:
    """What to do after a failed attempt: give up (``dead``) or wait ``delay`` seconds."""

    dead: bool
    delay: float = 0.0


def _call_state(policy: RetryPolicy, attempts: int, elapsed: float) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(
        tenacity.Retrying(stop=policy.stop, wait=policy.wait, retry=policy.retry), None, (), {}
    )
    state.attempt_number = max(attempts, 1)
    now = time.monotonic()
    state.start_time = now - max(elapsed, 0.0)
    state.outcome_timestamp = now
    return state


def decide(policy: RetryPolicy, attempts: int, elapsed: float, error: BaseException) -> Verdict:
    """Judge a failed attempt.

    ``attempts`` counts every attempt so far including the failed one; ``elapsed`` is the
    seconds since the first attempt (database clock).
    """
    state = _call_state(policy, attempts, elapsed)
    future = tenacity.Future(attempts)
    future.set_exception(error)
    state.outcome = future
    if isinstance(error, Discard) or not policy.retry(state) or policy.stop(state):
        return Verdict(dead=True)
    return Verdict(dead=False, delay=max(0.0, float(policy.wait(state))))


def exhausted(policy: RetryPolicy, attempts: int, elapsed: float) -> bool:
    """True when ``attempts`` already reached the policy's stop (a lost attempt counts)."""
    return bool(policy.stop(_call_state(policy, attempts, elapsed)))


# Errors a worker waits out instead of dying: lost or refused connections, server restarts
# and failovers (read-only for a while), cancelled statements (statement_timeout,
# pg_cancel_backend), resource exhaustion, lock conflicts.
_TRANSIENT = (
    OSError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InternalClientError,
    asyncpg.LockNotAvailableError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


def is_transient(error: BaseException) -> bool:
    """True for database errors that a reconnect or a second try may cure."""
    return isinstance(error, _TRANSIENT)


def reconnect_delay(failures: int) -> float:
    """Seconds to wait before reconnect number ``failures`` (1-based): 0.1 s doubling to 5 s."""
    return float(min(5.0, 0.1 * 2 ** max(failures - 1, 0)))


def describe_error(exc: BaseException) -> str:
    """The exception's type and SQLSTATE for logs (never its message: it may quote data)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" [{state}]" if state else "")
