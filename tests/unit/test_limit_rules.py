"""Concurrency limits without a database: registry checks, deferral bookkeeping, backoff."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest

from pgqueue import Registry
from pgqueue._queries import ClaimedRow
from pgqueue._worker.dispatch import Delivery, Kind, Outcome, finish, parse_records, plan
from pgqueue._worker.limits import DEFER_BASE, DEFER_CAP, defer_delay
from pgqueue.errors import RegistryError

NOW = 1_800_000_000.0


async def fn(payload: dict[str, Any]) -> None:
    return None


def test_concurrency_is_kept_and_listed_by_name() -> None:
    registry = Registry()
    registry.add("order.placed", fn, name="crm", concurrency=5)
    registry.add("customer.created", fn, name="crm", concurrency=5)
    registry.add("order.placed", fn, name="email")
    assert [h.concurrency for h in registry.handlers_for("order.placed")] == [5, None]
    assert registry.limits == {"crm": 5}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5"])
def test_concurrency_must_be_a_positive_integer(bad: Any) -> None:
    with pytest.raises(RegistryError, match="concurrency must be a positive integer"):
        Registry().add("order.placed", fn, name="crm", concurrency=bad)


@pytest.mark.parametrize("other", [3, None])
def test_one_name_has_one_limit_across_event_types(other: int | None) -> None:
    registry = Registry()
    registry.add("order.placed", fn, name="crm", concurrency=5)
    with pytest.raises(RegistryError, match="a limit is shared by every handler of that name"):
        registry.add("customer.created", fn, name="crm", concurrency=other)


def _delivery(attempt: int, records: dict[str, Any] | None) -> Delivery:
    raw = json.dumps(records) if records is not None else None
    row = ClaimedRow(42, "order.placed", "{}", attempt, raw, dt.datetime.now(dt.UTC), NOW, 1.0)
    return Delivery(row, uuid.UUID(int=7), time.monotonic(), parse_records(raw))


def _two_handlers() -> Registry:
    registry = Registry()
    registry.add("order.placed", fn, name="crm", concurrency=1)
    registry.add("order.placed", fn, name="audit")
    return registry


def test_deferral_beside_a_sibling_keeps_the_claims_attempt_and_uses_none_of_its_own() -> None:
    handlers = _two_handlers().handlers_for("order.placed")
    delivery = _delivery(1, None)
    plan(delivery, handlers)
    delivery.outcomes["crm"] = Outcome(Kind.DEFERRED, 0, delay=0.5)
    delivery.outcomes["audit"] = Outcome(Kind.DONE, 1)
    completion = finish(delivery, handlers)
    assert (completion.state, completion.refund, completion.deferred) == ("pending", 0, True)
    assert completion.delay == pytest.approx(0.5, abs=0.05)
    assert completion.handlers is not None
    crm = json.loads(completion.handlers)["crm"]
    assert (crm["state"], crm["attempts"], crm["seen"], crm["deferred"]) == ("pending", 0, 1, 1)
    assert crm["not_before"] == pytest.approx(NOW + 0.5, abs=0.05)


def test_a_claim_where_only_deferrals_happened_gives_its_attempt_back() -> None:
    handlers = _two_handlers().handlers_for("order.placed")
    records = {
        "audit": {"state": "done", "attempts": 1, "seen": 1},
        "crm": {"state": "pending", "attempts": 2, "seen": 3, "deferred": 4, "error": "boom"},
    }
    delivery = _delivery(4, records)
    assert [(h.name, prior) for h, prior in plan(delivery, handlers)] == [("crm", 2)]
    delivery.outcomes["crm"] = Outcome(Kind.DEFERRED, 2, delay=1.0)
    completion = finish(delivery, handlers)
    assert (completion.state, completion.refund, completion.deferred) == ("pending", 1, True)
    assert completion.handlers is not None
    crm = json.loads(completion.handlers)["crm"]
    # Written relative to the refunded attempt: the next claim (attempt 4 again) sees 2 prior.
    assert (crm["attempts"], crm["seen"], crm["deferred"], crm["error"]) == (2, 3, 5, "boom")
    again = _delivery(4, json.loads(completion.handlers))
    assert [(h.name, prior) for h, prior in plan(again, handlers)] == []  # not due yet
    assert again.outcomes["crm"].kind is Kind.SKIPPED


def test_a_run_after_deferrals_clears_the_deferral_count() -> None:
    handlers = _two_handlers().handlers_for("order.placed")
    records = {
        "audit": {"state": "done", "attempts": 1, "seen": 1},
        "crm": {"state": "pending", "attempts": 0, "seen": 1, "deferred": 3},
    }
    delivery = _delivery(2, records)
    plan(delivery, handlers)
    delivery.outcomes["crm"] = Outcome(Kind.RETRY, 1, "boom", delay=10.0)
    completion = finish(delivery, handlers)
    assert (completion.refund, completion.deferred) == (0, False)
    assert completion.handlers is not None
    assert "deferred" not in json.loads(completion.handlers)["crm"]


def test_defer_delay_grows_and_is_capped_and_jittered() -> None:
    for deferrals, ceiling in [(0, DEFER_BASE), (1, 2 * DEFER_BASE), (50, DEFER_CAP)]:
        delays = [defer_delay(deferrals) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
