"""Per-event bookkeeping in pgqueue._worker.dispatch: attempts, plans and the row's next state."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest
from tenacity import stop_after_attempt, wait_none

from pgqueue import Registry, RetryPolicy
from pgqueue._models import HandlerRecord, HandlerState
from pgqueue._queries import ClaimedRow
from pgqueue._registry import Handler
from pgqueue._worker.dispatch import (
    MAX_ERROR_CHARS,
    Delivery,
    Kind,
    Outcome,
    error_text,
    finish,
    parse_records,
    plan,
    prior_attempts,
    unrecorded,
)

NOW = 1_800_000_000.0
TOKEN = uuid.UUID(int=7)


def _handlers(*names: str, stop: int = 3) -> tuple[Handler, ...]:
    registry = Registry()
    policy = RetryPolicy(stop=stop_after_attempt(stop), wait=wait_none())
    for name in names:

        async def fn(payload: dict[str, Any]) -> None: ...

        registry.add("order.placed", fn, name=name, retry=policy)
    return registry.handlers_for("order.placed")


def _delivery(attempt: int, records: dict[str, Any] | None = None) -> Delivery:
    raw = json.dumps(records) if records is not None else None
    row = ClaimedRow(
        id=42,
        event_type="order.placed",
        payload="{}",
        attempt=attempt,
        handlers=raw,
        created_at=dt.datetime.now(dt.UTC),
        db_now=NOW,
        age=1.0,
    )
    return Delivery(row, TOKEN, claimed_at=time.monotonic(), records=parse_records(raw))


def _stored(completion_handlers: str | None) -> dict[str, Any]:
    assert completion_handlers is not None
    data: dict[str, Any] = json.loads(completion_handlers)
    return data


# -- prior_attempts -------------------------------------------------------------------------


def test_first_claim_has_no_prior_attempts() -> None:
    assert prior_attempts(None, 1) == 0


def test_claims_without_a_record_count_as_lost_attempts() -> None:
    # Two earlier claims never wrote back (the worker died both times).
    assert prior_attempts(None, 3) == 2


def test_record_attempts_plus_claims_lost_since_it_was_written() -> None:
    record = HandlerRecord(HandlerState.PENDING, attempts=2, seen=2)
    assert prior_attempts(record, 3) == 2  # nothing lost since
    assert prior_attempts(record, 5) == 4  # claims 3 and 4 were lost


def test_a_record_written_after_a_refund_never_counts_negative() -> None:
    record = HandlerRecord(HandlerState.PENDING, attempts=1, seen=4)
    assert prior_attempts(record, 3) == 1


# -- plan -------------------------------------------------------------------------------------


def test_plan_runs_every_handler_on_a_fresh_event() -> None:
    handlers = _handlers("a", "b", "c")
    delivery = _delivery(1)
    to_run = plan(delivery, handlers)
    assert [(h.name, prior) for h, prior in to_run] == [("a", 0), ("b", 0), ("c", 0)]
    assert delivery.waiting == 3
    assert delivery.outcomes == {}


def test_plan_skips_handlers_that_are_done_or_dead() -> None:
    handlers = _handlers("a", "b", "c")
    delivery = _delivery(
        2,
        {
            "a": {"state": "done", "attempts": 1, "seen": 1},
            "b": {"state": "dead", "attempts": 3, "seen": 1, "error": "x"},
            "c": {"state": "pending", "attempts": 1, "seen": 1, "error": "boom"},
        },
    )
    to_run = plan(delivery, handlers)
    assert [(h.name, prior) for h, prior in to_run] == [("c", 1)]
    assert delivery.waiting == 1


def test_plan_defers_a_handler_whose_backoff_is_not_due() -> None:
    handlers = _handlers("a", "b")
    delivery = _delivery(
        2,
        {
            "a": {"state": "pending", "attempts": 1, "seen": 1, "not_before": NOW + 60},
            "b": {"state": "pending", "attempts": 1, "seen": 1, "not_before": NOW - 1},
        },
    )
    to_run = plan(delivery, handlers)
    assert [h.name for h, _ in to_run] == ["b"]
    assert delivery.outcomes["a"].kind is Kind.SKIPPED
    assert delivery.outcomes["a"].attempts == 1


def test_plan_kills_a_handler_whose_attempts_were_all_lost() -> None:
    handlers = _handlers("crashy", stop=3)
    delivery = _delivery(4)  # three claims, none wrote back
    assert plan(delivery, handlers) == []
    outcome = delivery.outcomes["crashy"]
    assert outcome.kind is Kind.DEAD
    assert outcome.attempts == 3
    assert outcome.error is not None and "gave up after 3 attempts" in outcome.error


def test_plan_keeps_the_earlier_error_when_giving_up() -> None:
    handlers = _handlers("crashy", stop=2)
    delivery = _delivery(
        3, {"crashy": {"state": "pending", "attempts": 1, "seen": 1, "error": "OSError: disk"}}
    )
    assert plan(delivery, handlers) == []
    assert "earlier error: OSError: disk" in (delivery.outcomes["crashy"].error or "")


# -- finish -----------------------------------------------------------------------------------


def test_happy_path_writes_no_handler_records() -> None:
    handlers = _handlers("a", "b")
    delivery = _delivery(1)
    plan(delivery, handlers)
    for h in handlers:
        delivery.outcomes[h.name] = Outcome(Kind.DONE, 1)
    completion = finish(delivery, handlers)
    assert completion.state == "done"
    assert completion.handlers is None
    assert completion.happy
    assert (completion.id, completion.token) == (42, TOKEN)


def test_success_after_quick_retries_records_the_attempts() -> None:
    handlers = _handlers("a", "flaky")
    delivery = _delivery(1)
    plan(delivery, handlers)
    delivery.outcomes["a"] = Outcome(Kind.DONE, 1)
    delivery.outcomes["flaky"] = Outcome(Kind.DONE, 3, "RuntimeError: boom")
    completion = finish(delivery, handlers)
    assert completion.state == "done" and not completion.happy
    stored = _stored(completion.handlers)
    assert stored["flaky"]["state"] == "done" and stored["flaky"]["attempts"] == 3
    assert stored["a"]["attempts"] == 1
    assert completion.error is None


def test_durable_retry_keeps_the_event_pending_with_the_shortest_delay() -> None:
    handlers = _handlers("a", "slow", "slower")
    delivery = _delivery(1)
    plan(delivery, handlers)
    delivery.outcomes["a"] = Outcome(Kind.DONE, 1)
    delivery.outcomes["slow"] = Outcome(Kind.RETRY, 1, "E: one", delay=30.0)
    delivery.outcomes["slower"] = Outcome(Kind.RETRY, 1, "E: two", delay=90.0)
    completion = finish(delivery, handlers)
    assert completion.state == "pending"
    assert 29.0 <= completion.delay <= 30.0
    assert completion.refund == 0
    stored = _stored(completion.handlers)
    assert stored["a"]["state"] == "done"
    assert stored["slow"] == {
        "state": "pending",
        "attempts": 1,
        "seen": 1,
        "error": "E: one",
        "not_before": stored["slow"]["not_before"],
        "updated_at": stored["slow"]["updated_at"],
    }
    assert stored["slower"]["not_before"] - stored["slow"]["not_before"] == 60.0
    assert completion.error == "slow: E: one"


def test_a_dead_handler_makes_the_event_dead_once_nothing_is_pending() -> None:
    handlers = _handlers("a", "poison")
    delivery = _delivery(1)
    plan(delivery, handlers)
    delivery.outcomes["a"] = Outcome(Kind.DONE, 1)
    delivery.outcomes["poison"] = Outcome(Kind.DEAD, 3, "ValueError: never")
    completion = finish(delivery, handlers)
    assert completion.state == "dead"
    assert completion.error == "poison: ValueError: never"
    stored = _stored(completion.handlers)
    assert stored["poison"]["state"] == "dead" and stored["poison"]["attempts"] == 3


def test_pending_sibling_wins_over_dead() -> None:
    handlers = _handlers("poison", "later")
    delivery = _delivery(1)
    plan(delivery, handlers)
    delivery.outcomes["poison"] = Outcome(Kind.DEAD, 1, "ValueError: x")
    delivery.outcomes["later"] = Outcome(Kind.RETRY, 1, "E: y", delay=5.0)
    assert finish(delivery, handlers).state == "pending"


def test_interrupted_work_is_handed_back_with_the_attempt_refunded() -> None:
    handlers = _handlers("a", "b")
    delivery = _delivery(3, {"a": {"state": "pending", "attempts": 2, "seen": 2, "error": "E"}})
    plan(delivery, handlers)
    delivery.outcomes["a"] = Outcome(Kind.INTERRUPTED, 2)
    delivery.outcomes["b"] = Outcome(Kind.DONE, 3)
    completion = finish(delivery, handlers)
    assert (completion.state, completion.refund, completion.delay) == ("pending", 1, 0.0)
    stored = _stored(completion.handlers)
    assert stored["a"]["seen"] == 2 and stored["a"]["attempts"] == 2
    assert stored["a"]["error"] == "E"
    assert stored["b"]["state"] == "done"


def test_a_handler_whose_outcome_never_came_is_handed_back_at_its_planned_attempts() -> None:
    # A fatal stop: the runner of "c" ended without recording it; "b" finished meanwhile.
    handlers = _handlers("a", "b", "c")
    delivery = _delivery(
        3,
        {
            "a": {"state": "done", "attempts": 1, "seen": 2},
            "b": {"state": "pending", "attempts": 1, "seen": 2, "error": "E"},
            "c": {"state": "pending", "attempts": 2, "seen": 2, "error": "F"},
        },
    )
    planned = [(h.name, prior) for h, prior in plan(delivery, handlers)]
    delivery.outcomes["b"] = Outcome(Kind.DONE, 2)
    assert [(h.name, prior) for h, prior in unrecorded(delivery, handlers)] == [("c", 2)]
    assert ("c", 2) in planned
    delivery.outcomes["c"] = Outcome(Kind.INTERRUPTED, 2)
    assert unrecorded(delivery, handlers) == []
    completion = finish(delivery, handlers)
    assert (completion.state, completion.refund) == ("pending", 1)


def test_record_of_a_removed_handler_does_not_keep_the_event_pending() -> None:
    handlers = _handlers("a")
    delivery = _delivery(2, {"gone": {"state": "pending", "attempts": 1, "seen": 1}})
    plan(delivery, handlers)
    delivery.outcomes["a"] = Outcome(Kind.DONE, 2)
    completion = finish(delivery, handlers)
    assert completion.state == "done"
    assert "gone" in _stored(completion.handlers)


def test_all_handlers_already_done_finishes_done() -> None:
    handlers = _handlers("a", "b")
    delivery = _delivery(
        2,
        {
            "a": {"state": "done", "attempts": 1, "seen": 1},
            "b": {"state": "done", "attempts": 2, "seen": 1},
        },
    )
    assert plan(delivery, handlers) == []
    assert finish(delivery, handlers).state == "done"


def test_error_text_is_one_bounded_line() -> None:
    text = error_text(ValueError("line one\nline two" + "x" * 5000))
    assert text.startswith("ValueError: line one line two")
    assert "\n" not in text
    assert len(text) == MAX_ERROR_CHARS


def test_handler_without_a_record_among_recorded_siblings_has_no_prior_attempts() -> None:
    handlers = _handlers("a", "new", stop=3)
    delivery = _delivery(4, {"a": {"state": "pending", "attempts": 0, "seen": 3}})
    to_run = plan(delivery, handlers)
    assert [(h.name, prior) for h, prior in to_run] == [("a", 0), ("new", 0)]


def test_decode_payload_reads_jsonb_output_and_refuses_anything_else() -> None:
    """The worker's payload decoder (pgqueue/_worker/intake.py) takes jsonb's canonical text."""
    from pgqueue._worker.intake import decode_payload

    assert decode_payload('{"n": 1, "s": "x", "a": [1, {"b": null}]}') == {
        "n": 1,
        "s": "x",
        "a": [1, {"b": None}],
    }
    with pytest.raises(ValueError, match="extra data"):
        decode_payload('{"n": 1} {"n": 2}')
    with pytest.raises(ValueError):
        decode_payload('{"n": ')
    with pytest.raises(RecursionError):
        decode_payload("[" * 100_000 + "]" * 100_000)


def test_new_context_builds_the_same_frozen_context() -> None:
    """The worker's fast Context constructor (pgqueue/_models.py) sets every field, in order."""
    import dataclasses

    from pgqueue import Context
    from pgqueue._models import new_context

    created = dt.datetime.now(dt.UTC)
    values: list[object] = [f"v{i}" for i in range(len(dataclasses.fields(Context)))]
    values[4] = created  # distinct values: a field set from the wrong position shows
    fast, slow = new_context(*values), Context(*values)
    assert fast == slow and hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in dataclasses.fields(Context)] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.attempt = 2  # type: ignore[misc]
