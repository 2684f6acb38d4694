"""The wildcard record (replay / retry to one handler) and discarded handlers in _dispatch."""

from __future__ import annotations

from pgqueue._worker.dispatch import Kind, Outcome, finish, lost_claims, plan
from tests.unit.test_dispatch import _delivery, _handlers, _stored

DONE_REST = {"state": "done", "attempts": 0, "seen": 1}


def test_wildcard_done_runs_only_the_handler_with_a_pending_record() -> None:
    handlers = _handlers("email", "crm", "audit")
    delivery = _delivery(2, {"*": DONE_REST, "crm": {"state": "pending", "attempts": 0, "seen": 1}})

    to_run = plan(delivery, handlers)

    assert [(h.name, prior) for h, prior in to_run] == [("crm", 0)]
    assert not lost_claims(delivery)
    delivery.outcomes["crm"] = Outcome(Kind.DONE, 1)
    completion = finish(delivery, handlers)
    assert completion.state == "done"
    stored = _stored(completion.handlers)
    # The wildcard stays as it was and still covers email and audit: no records invented.
    assert stored["*"] == DONE_REST
    assert set(stored) == {"*", "crm"}
    assert stored["crm"]["state"] == "done"


def test_wildcard_keeps_an_event_pending_while_its_target_retries() -> None:
    handlers = _handlers("email", "crm")
    delivery = _delivery(2, {"*": DONE_REST, "crm": {"state": "pending", "attempts": 0, "seen": 1}})
    plan(delivery, handlers)
    delivery.outcomes["crm"] = Outcome(Kind.RETRY, 1, "RuntimeError: down", delay=5.0)

    completion = finish(delivery, handlers)

    assert completion.state == "pending"
    assert completion.error == "crm: RuntimeError: down"


def test_handler_with_its_own_record_is_not_covered_by_the_wildcard() -> None:
    handlers = _handlers("email", "crm")
    delivery = _delivery(
        2,
        {
            "*": DONE_REST,
            "email": {"state": "dead", "attempts": 3, "seen": 1, "error": "boom"},
            "crm": {"state": "pending", "attempts": 0, "seen": 1},
        },
    )
    assert [h.name for h, _ in plan(delivery, handlers)] == ["crm"]
    delivery.outcomes["crm"] = Outcome(Kind.DONE, 1)
    assert finish(delivery, handlers).state == "dead"


def test_discarded_handler_does_not_run_and_the_event_ends_discarded() -> None:
    handlers = _handlers("email", "crm")
    delivery = _delivery(
        3,
        {
            "email": {"state": "discarded", "attempts": 3, "seen": 2, "error": "boom"},
            "crm": {"state": "pending", "attempts": 0, "seen": 2},
        },
    )
    assert [h.name for h, _ in plan(delivery, handlers)] == ["crm"]
    delivery.outcomes["crm"] = Outcome(Kind.DONE, 1)

    completion = finish(delivery, handlers)

    assert completion.state == "discarded"
    assert completion.error == "email: boom"
    assert _stored(completion.handlers)["email"]["state"] == "discarded"
