"""Retry arithmetic: pgqueue._backoff.decide / exhausted on tenacity primitives."""

from __future__ import annotations

import asyncpg
import pytest
from tenacity import (
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_none,
)

from pgqueue import Discard, RetryPolicy
from pgqueue._backoff import (
    DEFAULT_MAX_ATTEMPTS,
    decide,
    exhausted,
    is_transient,
    reconnect_delay,
)


def test_failure_before_the_stop_waits_the_policy_delay() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(7))
    verdict = decide(policy, 1, 0.0, RuntimeError("boom"))
    assert not verdict.dead
    assert verdict.delay == 7


def test_failure_at_the_stop_is_dead() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(7))
    assert not decide(policy, 2, 0.0, RuntimeError()).dead
    assert decide(policy, 3, 0.0, RuntimeError()).dead


def test_discard_is_dead_at_once_under_the_default_policy() -> None:
    assert decide(RetryPolicy(), 1, 0.0, Discard("no such customer")).dead


def test_discard_is_dead_at_once_whatever_the_retry_predicate() -> None:
    policy = RetryPolicy(retry=retry_if_exception_type(Exception), wait=wait_none())
    assert decide(policy, 1, 0.0, Discard("no such customer")).dead


def test_error_the_retry_predicate_rejects_is_dead_at_once() -> None:
    policy = RetryPolicy(retry=retry_if_exception_type(ConnectionError), wait=wait_none())
    assert decide(policy, 1, 0.0, ValueError("bad")).dead
    assert not decide(policy, 1, 0.0, ConnectionError("flaky")).dead


def test_stop_after_delay_uses_the_elapsed_seconds() -> None:
    policy = RetryPolicy(stop=stop_after_delay(60), wait=wait_none())
    assert not decide(policy, 5, 59.0, RuntimeError()).dead
    assert decide(policy, 5, 61.0, RuntimeError()).dead


def test_default_policy_gives_up_after_ten_attempts() -> None:
    policy = RetryPolicy()
    assert DEFAULT_MAX_ATTEMPTS == 10
    assert not decide(policy, 9, 0.0, RuntimeError()).dead
    assert decide(policy, 10, 0.0, RuntimeError()).dead


def test_default_waits_grow_exponentially_from_half_a_second() -> None:
    policy = RetryPolicy()
    delays = [decide(policy, n, 0.0, RuntimeError()).delay for n in range(1, 6)]
    for n, delay in enumerate(delays):
        base = 0.5 * 2**n
        assert base <= delay <= base + 0.25, (n + 1, delay)


def test_default_first_wait_is_in_process() -> None:
    policy = RetryPolicy()
    for _ in range(50):
        assert decide(policy, 1, 0.0, RuntimeError()).delay <= policy.inline_max_wait


def test_default_second_wait_is_in_process_as_documented() -> None:
    policy = RetryPolicy()
    for _ in range(50):
        assert decide(policy, 2, 0.0, RuntimeError()).delay <= policy.inline_max_wait


def test_negative_wait_is_clamped_to_zero() -> None:
    class Backwards(wait_fixed):
        def __call__(self, retry_state: object) -> float:
            return -3.0

    verdict = decide(RetryPolicy(wait=Backwards(0)), 1, 0.0, RuntimeError())
    assert verdict == type(verdict)(dead=False, delay=0.0)


def test_exhausted_counts_attempts_already_made() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(3))
    assert not exhausted(policy, 2, 0.0)
    assert exhausted(policy, 3, 0.0)
    assert exhausted(policy, 4, 0.0)


def test_exhausted_by_elapsed_time() -> None:
    policy = RetryPolicy(stop=stop_after_delay(10))
    assert not exhausted(policy, 1, 5.0)
    assert exhausted(policy, 1, 11.0)


def test_transient_errors_are_connection_level_only() -> None:
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(asyncpg.DeadlockDetectedError("deadlock"))
    assert not is_transient(ValueError("bug"))
    assert not is_transient(asyncpg.UndefinedTableError("no table"))


def test_reconnect_delay_doubles_up_to_five_seconds() -> None:
    assert [reconnect_delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert reconnect_delay(7) == 5.0
    assert reconnect_delay(100) == 5.0
    assert reconnect_delay(0) == 0.1


# -- run_with_backoff (pgqueue/_worker/loop.py) ----------------------------------------------------


async def test_run_with_backoff_retries_with_growing_waits_until_the_step_is_done() -> None:
    from pgqueue._worker.loop import run_with_backoff

    waits: list[float] = []
    errors: list[str] = []
    results: list[float | None] = [0.5, None]
    failures = [ConnectionResetError(), OSError()]

    async def step() -> float | None:
        if failures:
            raise failures.pop(0)
        return results.pop(0)

    async def on_error(exc: BaseException) -> None:
        errors.append(type(exc).__name__)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    await run_with_backoff(step, "testing", on_error=on_error, sleep=sleep)
    assert waits == [0.1, 0.2, 0.5]  # two backoffs, then the step's own wait; None ends it
    assert errors == ["ConnectionResetError", "OSError"]


async def test_run_with_backoff_raises_what_no_retry_cures_and_caps_its_waits() -> None:
    from pgqueue._worker.loop import run_with_backoff

    waits: list[float] = []
    calls = 0

    async def step() -> float | None:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise ConnectionResetError()
        raise ValueError("a bug")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    with pytest.raises(ValueError, match="a bug"):
        await run_with_backoff(
            step, "testing", fatal=lambda exc: isinstance(exc, ValueError), cap=0.3, sleep=sleep
        )
    assert waits == [0.1, 0.2, 0.3, 0.3, 0.3]
