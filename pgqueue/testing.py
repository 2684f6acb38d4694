"""Helpers for testing code that uses pgqueue: assertions, a burst drain, pytest fixtures.

Assertions take a *source*: an asyncpg connection (or pool) of a pgqueue database, or an
:class:`pgqueue.InProcess` dispatcher, so one test can move between the two transports::

    await assert_enqueued(conn, "order.placed", {"order_id": 42})
    stats = await drain(dsn, registry)               # a real burst worker
    await assert_processed(conn, event_id)
    await assert_dead(conn, other_id, handler="sync_crm", error="ConnectionError")

The pytest plugin is opt-in (it is not auto-loaded): in your root ``conftest.py`` write
``pytest_plugins = ["pgqueue.testing"]`` (or run ``pytest -p pgqueue.testing``). It needs
pytest-asyncio and a PostgreSQL server whose role may CREATE DATABASE, given by
``--pgqueue-dsn`` or ``$PGQUEUE_TEST_DSN`` (a maintenance DSN, e.g.
``postgresql://postgres@localhost/postgres``). Fixtures:

- ``pgqueue_dsn``: a fresh database per test, cloned from a template migrated once per
  session (and per xdist worker), dropped after the test.
- ``pgqueue_conn``: an asyncpg connection to it.
- ``pgqueue_admin_dsn`` / ``pgqueue_schema`` / ``pgqueue_setup`` (session): the server, the
  schema (``"pgqueue"``) and an optional ``async setup(conn)`` run once on the template (your
  own tables); override them in your conftest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from ._inprocess import EventResult, HandlerResult, InProcess
from ._models import EventState, HandlerState, WorkerStats
from ._queries import queries_for
from ._registry import Registry
from ._scratchdb import ScratchDatabases, run_sync
from ._settings import DEFAULT_SCHEMA, WorkerSettings
from ._worker.worker import Worker

__all__ = [
    "assert_dead",
    "assert_enqueued",
    "assert_processed",
    "drain",
    "enqueued",
    "refute_enqueued",
]

Source = Any  # asyncpg.Connection | asyncpg.Pool | InProcess
Setup = Callable[[asyncpg.Connection], Awaitable[None]]


# -- reading events -------------------------------------------------------------------------


def contains(actual: Any, expected: Any) -> bool:
    """JSON containment as PostgreSQL's ``@>``: objects by subset, arrays by membership."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return isinstance(actual, list) and all(
            any(contains(a, e) for a in actual) for e in expected
        )
    # JSON keeps true and 1 apart; Python does not.
    return isinstance(actual, bool) == isinstance(expected, bool) and bool(actual == expected)


def _from_row(row: Any) -> EventResult:
    records: dict[str, Any] = json.loads(row["handlers"]) if row["handlers"] else {}
    return EventResult(
        id=row["id"],
        event_type=row["event_type"],
        payload=json.loads(row["payload"]),
        state=EventState(row["state"]),
        queue=row["queue"],
        run_at=row["run_at"],
        created_at=row["created_at"],
        idempotency_key=row["idempotency_key"],
        attempt=row["attempt"],
        handlers={
            name: HandlerResult(HandlerState(r["state"]), r["attempts"], r.get("error"))
            for name, r in records.items()
        },
        error=row["last_error"],
    )


async def _all(source: Source, event_type: str | None, schema: str) -> list[EventResult]:
    if isinstance(source, InProcess):
        return source.events(event_type)
    rows = await queries_for(schema).admin.test_events(source, event_type)
    return [_from_row(row) for row in rows]


async def enqueued(
    source: Source,
    event_type: str | None = None,
    payload: dict[str, Any] | None = None,
    *,
    state: EventState | str | None = None,
    queue: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> list[EventResult]:
    """The events (by id) of ``event_type`` whose payload contains ``payload``, in ``state``
    and ``queue`` when given; every event when no filter is given."""
    return [
        e
        for e in await _all(source, event_type, schema)
        if (payload is None or contains(e.payload, payload))
        and (state is None or e.state == state)
        and (queue is None or e.queue == queue)
    ]


def _summary(events: list[EventResult]) -> str:
    # Ids and states only: payloads may hold personal data and belong in the test, not here.
    if not events:
        return "none"
    return ", ".join(f"#{e.id} {e.state.value}" for e in events[:20]) + (
        f" and {len(events) - 20} more" if len(events) > 20 else ""
    )


async def assert_enqueued(
    source: Source,
    event_type: str,
    payload: dict[str, Any] | None = None,
    *,
    count: int | None = None,
    state: EventState | str | None = None,
    queue: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> list[EventResult]:
    """Fail unless an event of ``event_type`` matching ``payload`` (a subset) exists, exactly
    ``count`` of them when given; return the matches."""
    found = await enqueued(source, event_type, payload, state=state, queue=queue, schema=schema)
    if (count is None and found) or (count is not None and len(found) == count):
        return found
    of_type = await enqueued(source, event_type, schema=schema)
    wanted = "an" if count is None else f"exactly {count}"
    where = "".join(
        f" {name} {value!r}" for name, value in (("in state", state), ("in queue", queue)) if value
    )
    raise AssertionError(
        f"expected {wanted} {event_type!r} event{where}"
        + (f" containing {payload!r}" if payload is not None else "")
        + f", found {len(found)}; {event_type!r} events: {_summary(of_type)}"
    )


async def refute_enqueued(
    source: Source,
    event_type: str,
    payload: dict[str, Any] | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> None:
    """Fail if an event of ``event_type`` (containing ``payload``, when given) exists."""
    found = await enqueued(source, event_type, payload, schema=schema)
    if found:
        raise AssertionError(
            f"expected no {event_type!r} event"
            + (f" containing {payload!r}" if payload is not None else "")
            + f", found {_summary(found)}"
        )


async def _one(source: Source, event_id: int, schema: str) -> EventResult:
    for event in await _all(source, None, schema):
        if event.id == event_id:
            return event
    raise AssertionError(f"no event {event_id} in the outbox")


def _handlers_text(event: EventResult) -> str:
    parts = [
        f"{name} {r.state.value} after {r.attempts} attempt(s)"
        + (f" ({r.error})" if r.error else "")
        for name, r in event.handlers.items()
    ]
    return "; handlers: " + ", ".join(parts) if parts else ""


async def assert_processed(
    source: Source, event_id: int, *, schema: str = DEFAULT_SCHEMA
) -> EventResult:
    """Fail unless event ``event_id`` is done (every handler succeeded); return it."""
    event = await _one(source, event_id, schema)
    if event.state is not EventState.DONE:
        raise AssertionError(
            f"event {event_id} ({event.event_type}) is {event.state.value}, not done"
            + (f"; last error: {event.error}" if event.error else "")
            + _handlers_text(event)
        )
    return event


async def assert_dead(
    source: Source,
    event_id: int,
    *,
    handler: str | None = None,
    error: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> EventResult:
    """Fail unless event ``event_id`` is dead; with ``handler``, that handler is dead, and
    with ``error``, its error (or the event's last error) contains that text."""
    event = await _one(source, event_id, schema)
    problem = None
    record = event.handlers.get(handler) if handler is not None else None
    text = record.error if record is not None else event.error
    if event.state is not EventState.DEAD:
        problem = f"is {event.state.value}, not dead"
    elif handler is not None and (record is None or record.state is not HandlerState.DEAD):
        problem = f"is dead, but not for handler {handler!r}"
    elif error is not None and error not in (text or ""):
        problem = f"is dead with error {text!r}, which does not contain {error!r}"
    if problem is not None:
        raise AssertionError(
            f"event {event_id} ({event.event_type}) {problem}" + _handlers_text(event)
        )
    return event


# -- running the real worker ----------------------------------------------------------------


async def drain(
    dsn: str,
    registry: Registry,
    *,
    with_scheduled: bool = False,
    schema: str = DEFAULT_SCHEMA,
    timeout: float = 30.0,
    **settings: Any,
) -> WorkerStats:
    """Run a real worker (``burst``) on ``dsn`` until nothing is ready; return its counters.

    ``with_scheduled``: also run events scheduled later, delayed ones and durable retries:
    after each burst they are made due now and another burst runs, until none is left (a
    handler that keeps failing ends dead after its policy's attempts). Without it they stay
    pending. ``settings`` are :class:`pgqueue.WorkerSettings` fields (``queues=("mail",)``).
    AssertionError if it all takes over ``timeout`` seconds.
    """
    config = WorkerSettings(burst=True, schema_name=schema, **settings)
    try:
        return await asyncio.wait_for(_drain(dsn, registry, config, with_scheduled), timeout)
    except TimeoutError:
        raise AssertionError(
            f"drain did not finish within {timeout:g}s: a handler hangs, events keep "
            "arriving, or a retry policy never stops; pass timeout=... for longer runs"
        ) from None


async def _drain(
    dsn: str, registry: Registry, settings: WorkerSettings, with_scheduled: bool
) -> WorkerStats:
    total = WorkerStats()
    while True:
        stats = await Worker(dsn, registry, settings).run()
        for counter in dataclasses.fields(stats):
            name = counter.name
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        if not with_scheduled:
            return total
        conn = await asyncpg.connect(dsn)
        try:
            advanced = await queries_for(settings.schema_name).admin.test_advance(
                conn, registry.event_types, settings.queues
            )
        finally:
            await conn.close()
        if not advanced:
            return total


# -- the pytest plugin ----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--pgqueue-dsn``: the server for the ``pgqueue_*`` fixtures."""
    parser.getgroup("pgqueue").addoption(
        "--pgqueue-dsn",
        default=None,
        help="maintenance DSN of a PostgreSQL server whose role may CREATE DATABASE "
        "(default: $PGQUEUE_TEST_DSN); each test gets its own database there",
    )


@pytest.fixture(scope="session")
def pgqueue_admin_dsn(pytestconfig: pytest.Config) -> str:
    """The server: ``--pgqueue-dsn``, else ``$PGQUEUE_TEST_DSN``; fails the test if neither."""
    dsn = pytestconfig.getoption("pgqueue_dsn") or os.environ.get("PGQUEUE_TEST_DSN")
    if not dsn:
        pytest.fail(
            "pgqueue.testing needs a PostgreSQL server: pass --pgqueue-dsn "
            "postgresql://user@host/postgres or set PGQUEUE_TEST_DSN (the role needs CREATEDB)",
            pytrace=False,
        )
    return str(dsn)


@pytest.fixture(scope="session")
def pgqueue_schema() -> str:
    """The pgqueue schema of the test databases; override to test another schema."""
    return DEFAULT_SCHEMA


@pytest.fixture(scope="session")
def pgqueue_setup() -> Setup | None:
    """An ``async setup(conn)`` run once on the migrated template (your tables); None here."""
    return None


@pytest.fixture(scope="session")
def pgqueue_databases(
    pgqueue_admin_dsn: str, pgqueue_schema: str, pgqueue_setup: Setup | None
) -> Iterator[ScratchDatabases]:
    """The session's template (migrated, set up) and the per-test clones; all dropped."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    databases = ScratchDatabases(
        pgqueue_admin_dsn, f"pgqueue_test_{worker}_{os.getpid()}_{secrets.token_hex(3)}"
    )
    try:
        run_sync(databases.create_template(pgqueue_schema, pgqueue_setup))
        yield databases
    finally:
        databases.close()


@pytest.fixture
def pgqueue_dsn(pgqueue_databases: ScratchDatabases) -> Iterator[str]:
    """DSN of a fresh migrated database for this test, dropped after it."""
    name, dsn = run_sync(pgqueue_databases.clone())
    try:
        yield dsn
    finally:
        pgqueue_databases.drop_later(name)


@pytest_asyncio.fixture
async def pgqueue_conn(pgqueue_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to ``pgqueue_dsn``, closed after the test."""
    conn = await asyncpg.connect(pgqueue_dsn)
    try:
        yield conn
    finally:
        await conn.close(timeout=5)
