"""Guard tests: the public names, and enums that mirror the SQL schema."""

from __future__ import annotations

import re
from pathlib import Path

import pgqueue
import pgqueue.admin
import pgqueue.errors
import pgqueue.relay
from pgqueue import EventState, HandlerState, _errors
from pgqueue._relay import SCHEMES

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

EXPECTED_ALL = [
    "Context",
    "Discard",
    "Event",
    "EventResult",
    "EventState",
    "HandlerResult",
    "HandlerState",
    "InProcess",
    "Metrics",
    "PayloadError",
    "PgQueueError",
    "Registry",
    "RetryPolicy",
    "Schedule",
    "WaitResult",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "enqueue",
    "enqueue_many",
    "enqueue_many_sync",
    "enqueue_sync",
    "load_registry",
    "migrate",
    "once",
    "once_sync",
    "wait",
]

# The operator API (pgqueue.admin): moved out of pgqueue in 0.1.x (CHANGELOG.md).
EXPECTED_ADMIN = [
    "BlockedKey",
    "CancelCount",
    "EventDetail",
    "EventPage",
    "EventSummary",
    "HandlerDetail",
    "LiveHandlerCount",
    "LiveStatus",
    "LiveTypeCounts",
    "QueuePause",
    "ReplayPreview",
    "ReplayResult",
    "StatusReport",
    "WorkerInfo",
    "blocked_keys",
    "cancel",
    "count_cancellable",
    "count_dead",
    "count_prunable",
    "discard",
    "get_event",
    "list_events",
    "list_paused",
    "list_workers",
    "live_status",
    "override_rate",
    "pause_queue",
    "pgqueue_dashboard",
    "preview_replay",
    "prune",
    "replay",
    "reschedule",
    "resume_queue",
    "retry",
    "status",
]
# Every error class of the tree and the handler signal (PgQueueError, PayloadError and Discard
# are also in pgqueue), and every relay a URL can pick with its contract: moved out of pgqueue
# in 0.1.x (CHANGELOG.md).
EXPECTED_ERRORS = sorted(
    name
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, Exception)
)
EXPECTED_RELAY = sorted(
    {"BrokerUnavailable", "Relay", "RelayMessage", *(cls.__name__ for cls in SCHEMES.values())}
)
MODULES = [
    (pgqueue, EXPECTED_ALL),
    (pgqueue.admin, EXPECTED_ADMIN),
    (pgqueue.errors, EXPECTED_ERRORS),
    (pgqueue.relay, EXPECTED_RELAY),
]


def test_public_names_are_exactly_these() -> None:
    for module, expected in MODULES:
        assert module.__all__ == expected, module.__name__


def test_public_names_are_sorted_and_unique() -> None:
    for module, _ in MODULES:
        assert module.__all__ == sorted(set(module.__all__))


def test_every_public_name_exists_and_has_a_docstring() -> None:
    for module, _ in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


def test_no_name_is_public_twice() -> None:
    """Once each, but for the three errors a producer or a handler meets: in pgqueue too."""
    assert not set(EXPECTED_ALL) & set(EXPECTED_ADMIN)
    assert not set(EXPECTED_ALL) & set(EXPECTED_RELAY)
    assert set(EXPECTED_ALL) & set(EXPECTED_ERRORS) == {"Discard", "PayloadError", "PgQueueError"}
    assert len(EXPECTED_ERRORS) == 9 and len(EXPECTED_RELAY) == 6
    for name in ("Discard", "PayloadError", "PgQueueError"):
        assert getattr(pgqueue, name) is getattr(pgqueue.errors, name)


def test_library_errors_share_one_base() -> None:
    for name in (
        "ConfigurationError",
        "RegistryError",
        "DatabaseUnavailableError",
        "SchemaError",
        "PayloadError",
        "EventNotFound",
        "WaitTimeout",
    ):
        assert issubclass(getattr(pgqueue.errors, name), pgqueue.PgQueueError)
    assert not issubclass(pgqueue.Discard, pgqueue.PgQueueError)


def _check_values(constraint: str) -> list[str]:
    """The values of the newest definition of ``constraint`` across the migrations."""
    found = []
    for path in sorted(SQL_DIR.glob("0*.sql")):
        found += re.findall(
            rf"CONSTRAINT {constraint}\s+CHECK \((?:state|VALUE) IN \(([^)]*)\)\)", path.read_text()
        )
    assert found, f"constraint {constraint} not found in {SQL_DIR}"
    return re.findall(r"'([^']*)'", found[-1])


def test_event_states_mirror_the_sql_check_constraint() -> None:
    allowed = _check_values("outbox_state_check")
    assert allowed == ["pending", "running", "done", "dead", "discarded", "cancelled"]
    assert [s.value for s in EventState] == allowed


def test_handler_states_are_the_event_states_minus_running() -> None:
    assert {s.value for s in HandlerState} == {s.value for s in EventState} - {"running"}
