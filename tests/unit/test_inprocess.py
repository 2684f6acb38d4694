"""pgqueue.InProcess: the worker's semantics without a database, and pgqueue.testing on it."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, field_validator
from tenacity import stop_after_attempt, stop_after_delay, stop_never, wait_fixed, wait_none

import pgqueue
import pgqueue.errors
from pgqueue.testing import assert_dead, assert_enqueued, assert_processed, refute_enqueued

README = Path(__file__).resolve().parents[2] / "README.md"
QUICK = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_none())
# Waits the worker would make durable (run_at two minutes later).
SLOW = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(120))


class Order(BaseModel):
    order_id: int
    customer_email: str


async def drain(bus: pgqueue.InProcess, **options: Any) -> list[pgqueue.EventResult]:
    """bus.drain(), failing the test instead of hanging (e.g. if a wait were really slept)."""
    return await asyncio.wait_for(bus.drain(**options), timeout=10)


def recording_bus(event_type: str) -> tuple[pgqueue.InProcess, list[int]]:
    """A bus with one handler of ``event_type`` that records the ids of the events it ran."""
    registry = pgqueue.Registry()
    ran: list[int] = []

    @registry.on(event_type)
    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        ran.append(ctx.event_id)

    return pgqueue.InProcess(registry), ran


async def test_publish_only_records_and_drain_runs_every_handler_of_the_type() -> None:
    registry = pgqueue.Registry()
    seen: list[tuple[str, int, str]] = []

    @registry.on("order.placed")
    async def email(order: Order, ctx: pgqueue.Context) -> None:
        seen.append(("email", ctx.event_id, order.customer_email))

    @registry.on("order.placed")
    async def shipment(order: Order) -> None:
        seen.append(("shipment", order.order_id, order.customer_email))

    bus = pgqueue.InProcess(registry)
    first = await bus.publish("order.placed", {"order_id": 7, "customer_email": "a@b.c"})
    second = await bus.publish("order.placed", Order(order_id=8, customer_email="d@e.f"))

    assert (first, second) == (1, 2)
    assert seen == []
    assert [e.state for e in bus.events()] == ["pending", "pending"]

    results = await drain(bus)

    assert [r.id for r in results] == [1, 2]
    assert sorted(seen) == [
        ("email", 1, "a@b.c"),
        ("email", 2, "d@e.f"),
        ("shipment", 7, "a@b.c"),
        ("shipment", 8, "d@e.f"),
    ]
    assert results[0].state == "done" and results[0].error is None
    assert results[0].handlers == {
        "email": pgqueue.HandlerResult(pgqueue.HandlerState.DONE, 1),
        "shipment": pgqueue.HandlerResult(pgqueue.HandlerState.DONE, 1),
    }
    assert bus.event(2).state == "done"
    assert await drain(bus) == []  # nothing left


async def test_handler_sees_the_payload_as_stored_json_and_a_filled_context() -> None:
    registry = pgqueue.Registry()
    contexts: list[pgqueue.Context] = []
    payloads: list[dict[str, Any]] = []

    @registry.on("user.signed_up", name="welcome")
    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        payloads.append(payload)
        contexts.append(ctx)

    bus = pgqueue.InProcess(registry, schema="app_queue")
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    event_id = await bus.publish("user.signed_up", {"at": when.isoformat(), "tags": ("a", "b")})
    await drain(bus)

    assert payloads == [{"at": "2026-01-02T03:04:05+00:00", "tags": ["a", "b"]}]
    [ctx] = contexts
    assert (ctx.event_id, ctx.event_type, ctx.handler, ctx.attempt) == (
        event_id,
        "user.signed_up",
        "welcome",
        1,
    )
    assert ctx.key == f"{event_id}:welcome"
    assert ctx.schema == "app_queue"
    assert ctx.created_at == bus.event(event_id).created_at
    assert ctx.created_at is not None and ctx.created_at.tzinfo is not None


async def test_payload_that_fails_validation_is_dead_at_once_with_the_workers_text() -> None:
    registry = pgqueue.Registry()
    plain: list[int] = []

    @registry.on("order.placed")
    async def typed(order: Order) -> None:
        raise AssertionError("must not run")

    @registry.on("order.placed")
    async def untyped(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        plain.append(ctx.event_id)

    bus = pgqueue.InProcess(registry)
    result = await bus.perform(
        "order.placed", {"order_id": "SECRET-CARD-4111", "customer_email": "a@b.c"}
    )

    assert result.state == "dead"
    assert plain == [result.id]
    typed_result = result.handlers["typed"]
    assert (typed_result.state, typed_result.attempts) == ("dead", 1)
    assert typed_result.error == (
        "ValidationError: payload does not match Order: order_id: Input should be a valid "
        "integer, unable to parse string as an integer"
    )
    assert result.error == f"typed: {typed_result.error}"
    assert "SECRET" not in result.error
    assert result.handlers["untyped"].state == "done"


async def test_failing_handler_is_retried_with_its_policy_and_siblings_run_once() -> None:
    registry = pgqueue.Registry()
    calls = {"flaky": 0, "steady": 0}

    @registry.on("t", retry=SLOW)
    async def flaky(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        calls["flaky"] += 1
        if ctx.attempt < 3:
            raise ConnectionError(f"down at attempt {ctx.attempt}")

    @registry.on("t")
    async def steady(payload: dict[str, Any]) -> None:
        calls["steady"] += 1

    bus = pgqueue.InProcess(registry)  # waits compressed: two 120 s waits do not hang
    [result] = [await bus.perform("t", {})]

    assert calls == {"flaky": 3, "steady": 1}
    assert result.state == "done" and result.error is None
    assert result.handlers["flaky"] == pgqueue.HandlerResult(
        pgqueue.HandlerState.DONE, 3, "ConnectionError: down at attempt 2", (120.0, 120.0)
    )


async def test_sleep_receives_every_wait_when_waits_are_honoured() -> None:
    registry = pgqueue.Registry()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    @registry.on("t", retry=SLOW)
    async def always(payload: dict[str, Any]) -> None:
        raise ValueError("no")

    bus = pgqueue.InProcess(registry, sleep=fake_sleep)
    result = await bus.perform("t", {})

    assert slept == [120.0, 120.0]
    assert result.state == "dead"
    assert result.handlers["always"] == pgqueue.HandlerResult(
        pgqueue.HandlerState.DEAD, 3, "ValueError: no", (120.0, 120.0)
    )
    assert result.error == "always: ValueError: no"


async def test_compressed_waits_count_as_elapsed_time_for_stop_after_delay() -> None:
    registry = pgqueue.Registry()
    policy = pgqueue.RetryPolicy(stop=stop_after_delay(300), wait=wait_fixed(60))

    @registry.on("t", retry=policy)
    async def always(payload: dict[str, Any]) -> None:
        raise ValueError("no")

    result = await pgqueue.InProcess(registry).perform("t", {})

    # Attempts at 0, 60, ..., 300 s of (virtual) time: the sixth sees 300 s and stops.
    assert result.handlers["always"].attempts == 6
    assert result.handlers["always"].waits == (60.0,) * 5


async def test_a_policy_that_never_stops_ends_at_the_attempt_limit() -> None:
    registry = pgqueue.Registry()
    policy = pgqueue.RetryPolicy(stop=stop_never, wait=wait_none())

    @registry.on("t", retry=policy)
    async def always(payload: dict[str, Any]) -> None:
        raise ValueError("no")

    result = await pgqueue.InProcess(registry, attempt_limit=25).perform("t", {})

    assert result.state == "dead"
    assert result.handlers["always"].attempts == 25
    assert result.handlers["always"].error == (
        "in-process attempt limit (25) reached; last error: ValueError: no"
    )


async def test_discard_is_dead_at_once_with_its_message() -> None:
    registry = pgqueue.Registry()
    calls: list[int] = []

    @registry.on("t", name="h")
    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        calls.append(ctx.attempt)
        raise pgqueue.Discard("customer 9 was deleted")

    result = await pgqueue.InProcess(registry).perform("t", {})

    assert calls == [1]
    assert result.handlers["h"] == pgqueue.HandlerResult(
        pgqueue.HandlerState.DEAD, 1, "Discard: customer 9 was deleted"
    )
    assert (result.state, result.error) == ("dead", "h: Discard: customer 9 was deleted")


async def test_handler_over_its_timeout_fails_and_ends_dead() -> None:
    registry = pgqueue.Registry()
    started: list[int] = []

    async def hang(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        started.append(ctx.attempt)
        await asyncio.Event().wait()

    registry.add("t", hang, timeout=0.05, retry=QUICK)
    bus = pgqueue.InProcess(registry)
    await bus.publish("t", {})
    [result] = await drain(bus)

    assert started == [1, 2, 3]
    hang_result = result.handlers["hang"]
    assert (hang_result.state, hang_result.attempts) == ("dead", 3)
    assert hang_result.error == "TimeoutError: handler exceeded its timeout of 0.05s"


async def test_events_published_in_a_failed_transaction_never_run() -> None:
    bus, ran = recording_bus("t")
    with pytest.raises(RuntimeError):
        async with bus.transaction():
            await bus.publish("t", {"n": 1})
            raise RuntimeError("the order insert failed")
    async with bus.transaction():
        kept = await bus.publish("t", {"n": 2})
        with pytest.raises(KeyError):
            async with bus.transaction():  # a savepoint: only its event goes
                await bus.publish("t", {"n": 3})
                raise KeyError("inner")
        assert bus.events() == []  # not visible before the commit
        with pytest.raises(RuntimeError, match="inside transaction"):
            await bus.perform("t", {})

    await drain(bus)

    assert kept == 2  # ids are not reused, like a rolled-back sequence
    assert ran == [2]
    assert [(e.id, e.payload) for e in bus.events()] == [(2, {"n": 2})]


async def test_a_transaction_belongs_to_the_task_that_opened_it() -> None:
    bus, _ = recording_bus("t")
    go = asyncio.Event()

    async def elsewhere() -> int:  # a task started before the block, e.g. a web request
        await go.wait()
        return await bus.publish("t", {"from": "another task"})

    other_task = asyncio.create_task(elsewhere())
    async with bus.transaction():
        held = await bus.publish("t", {"from": "this task"})
        go.set()
        other = await other_task
        assert [e.id for e in bus.events()] == [other]
    assert [e.id for e in bus.events()] == sorted([held, other])


async def test_idempotency_key_returns_the_first_events_id() -> None:
    bus, ran = recording_bus("t")
    first = await bus.publish("t", {"n": 1}, idempotency_key="order-1")
    async with bus.transaction():
        again = await bus.publish("t", {"n": 2}, idempotency_key="order-1")
        other = await bus.publish("t", {"n": 3}, idempotency_key="order-2")
        same_in_tx = await bus.publish("t", {"n": 4}, idempotency_key="order-2")
    await drain(bus)

    assert (first, again, other, same_in_tx) == (1, 1, 2, 2)
    assert sorted(ran) == [1, 2]
    performed = await bus.perform("t", {"n": 5}, idempotency_key="order-1")
    assert (performed.id, performed.state, ran.count(1)) == (1, "done", 1)


@pytest.mark.parametrize(
    ("event_type", "payload", "options", "error", "message"),
    [
        ("t", [1, 2], {}, pgqueue.PayloadError, "payload must be a JSON object"),
        ("t", {"x": object()}, {}, pgqueue.PayloadError, "payload is not JSON-serialisable"),
        ("", {}, {}, pgqueue.PayloadError, "event type must be a string of 1-128"),
        (
            "order placed",
            {},
            {},
            pgqueue.PayloadError,
            "event rejected by constraint outbox_event_type_format: the event type must be "
            "1-128 characters: ASCII letters",
        ),
        (
            "t",
            {"blob": "x" * 1_048_576},
            {},
            pgqueue.PayloadError,
            "event rejected by constraint outbox_payload_size",
        ),
        (
            "t",
            {},
            {"idempotency_key": "k" * 201},
            pgqueue.PayloadError,
            "event rejected by constraint outbox_idempotency_key_length",
        ),
        ("t", {}, {"queue": "no spaces"}, pgqueue.errors.ConfigurationError, "invalid queue name"),
    ],
)
async def test_bad_events_are_refused_with_enqueues_messages(
    event_type: str, payload: Any, options: dict[str, Any], error: type, message: str
) -> None:
    bus = pgqueue.InProcess(pgqueue.Registry())
    with pytest.raises(error) as raised:
        await bus.publish(event_type, payload, **options)
    assert str(raised.value).startswith(message)
    assert bus.events() == []


async def test_unhandled_types_stay_pending_and_scheduled_events_wait() -> None:
    bus, ran = recording_bus("handled")
    orphan = await bus.publish("nobody.listens", {})
    later = await bus.publish("handled", {}, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    other_queue = await bus.publish("handled", {}, queue="mail")

    assert [r.id for r in await drain(bus, queues=["default"])] == []
    assert [r.id for r in await drain(bus)] == [other_queue]
    assert [r.id for r in await drain(bus, with_scheduled=True)] == [later]
    assert ran == [other_queue, later]
    assert bus.event(orphan).state == "pending"
    with pytest.raises(LookupError, match="no event 99"):
        bus.event(99)


async def test_events_published_by_a_handler_run_in_the_same_drain() -> None:
    registry = pgqueue.Registry()
    bus = pgqueue.InProcess(registry)
    order: list[str] = []

    @registry.on("order.placed")
    async def place(payload: dict[str, Any]) -> None:
        order.append("placed")
        await bus.publish("invoice.due", {"order_id": payload["order_id"]})

    @registry.on("invoice.due")
    async def invoice(payload: dict[str, Any]) -> None:
        order.append(f"invoice {payload['order_id']}")

    await bus.publish("order.placed", {"order_id": 3})
    results = await drain(bus)

    assert order == ["placed", "invoice 3"]
    assert [(r.event_type, r.state) for r in results] == [
        ("order.placed", "done"),
        ("invoice.due", "done"),
    ]


async def test_ctx_pool_without_a_pool_fails_with_a_clear_error() -> None:
    registry = pgqueue.Registry()
    truthy: list[bool] = []

    @registry.on("t", retry=QUICK)
    async def needs_db(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        truthy.append(bool(ctx.pool))
        async with ctx.pool.acquire() as conn:
            await pgqueue.once(conn, ctx)

    result = await pgqueue.InProcess(registry).perform("t", {})

    assert truthy == [False, False, False]
    error = result.handlers["needs_db"].error
    assert error is not None
    assert error.startswith("ConfigurationError: ctx.pool.acquire: there is no database in process")
    assert "pgqueue.InProcess(registry, pool=" in error


async def test_ctx_pool_is_the_pool_given() -> None:
    registry = pgqueue.Registry()
    pools: list[object] = []
    marker = object()

    @registry.on("t")
    async def handler(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        pools.append(ctx.pool)

    await pgqueue.InProcess(registry, pool=marker).perform("t", {})
    assert pools == [marker]


# -- pgqueue.testing on the in-process mode --------------------------------------------------


async def test_testing_assertions_work_on_an_in_process_bus() -> None:
    registry = pgqueue.Registry()

    @registry.on("order.placed")
    async def ok(payload: dict[str, Any]) -> None:
        pass

    @registry.on("order.placed")
    async def picky(payload: dict[str, Any]) -> None:
        if payload["order_id"] == 2:
            raise pgqueue.Discard("order 2 was cancelled")

    bus = pgqueue.InProcess(registry)
    one = await bus.publish("order.placed", {"order_id": 1, "lines": [{"sku": "A"}, {"sku": "B"}]})
    two = await bus.publish("order.placed", {"order_id": 2})

    [match] = await assert_enqueued(bus, "order.placed", {"lines": [{"sku": "B"}]})
    assert match.id == one
    await assert_enqueued(bus, "order.placed", count=2, state="pending")
    await refute_enqueued(bus, "order.placed", {"order_id": 3})
    await refute_enqueued(bus, "order.shipped")

    await drain(bus)

    assert (await assert_processed(bus, one)).state == "done"
    await assert_dead(bus, two, handler="picky", error="cancelled")
    await assert_dead(bus, two, error="picky: Discard")


async def test_testing_assertions_fail_with_what_they_found() -> None:
    registry = pgqueue.Registry()

    @registry.on("t")
    async def fails(payload: dict[str, Any]) -> None:
        raise pgqueue.Discard("nope")

    bus = pgqueue.InProcess(registry)
    first = await bus.publish("t", {"n": 1, "flag": True})
    with pytest.raises(AssertionError, match=r"expected an 't' event containing \{'n': 2\}"):
        await assert_enqueued(bus, "t", {"n": 2})
    with pytest.raises(AssertionError, match=r"found 0; 't' events: #1 pending"):
        await assert_enqueued(bus, "t", {"flag": 1})  # JSON keeps true and 1 apart
    with pytest.raises(AssertionError, match=r"expected exactly 2 't' event, found 1"):
        await assert_enqueued(bus, "t", count=2)
    with pytest.raises(AssertionError, match=r"expected no 't' event, found #1 pending"):
        await refute_enqueued(bus, "t")
    with pytest.raises(AssertionError, match="event 1 \\(t\\) is pending, not dead"):
        await assert_dead(bus, first)

    await drain(bus)

    with pytest.raises(AssertionError, match=r"is dead, not done; last error: fails: Discard"):
        await assert_processed(bus, first)
    with pytest.raises(AssertionError, match="not for handler 'other'"):
        await assert_dead(bus, first, handler="other")
    with pytest.raises(AssertionError, match="which does not contain 'timeout'"):
        await assert_dead(bus, first, handler="fails", error="timeout")
    with pytest.raises(AssertionError, match="no event 5 in the outbox"):
        await assert_processed(bus, 5)


async def test_a_drain_inside_a_handler_does_not_run_the_running_event_again() -> None:
    registry = pgqueue.Registry()
    bus = pgqueue.InProcess(registry)
    runs: list[int] = []

    @registry.on("t")
    async def nested(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        runs.append(ctx.event_id)
        assert bus.event(ctx.event_id).state == "running"
        await bus.drain()

    await bus.publish("t", {})
    await drain(bus)
    assert runs == [1]
    assert bus.event(1).state == "done"


async def test_a_cancelled_drain_hands_the_event_back_and_it_runs_again() -> None:
    registry = pgqueue.Registry()
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    @registry.on("t")
    async def slow(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        runs.append(ctx.attempt)
        started.set()
        await release.wait()

    bus = pgqueue.InProcess(registry)
    await bus.publish("t", {})
    draining = asyncio.create_task(bus.drain())
    await asyncio.wait_for(started.wait(), timeout=10)
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining

    assert bus.event(1).state == "pending"
    release.set()
    [result] = await drain(bus)
    assert (result.state, runs) == ("done", [1, 1])


def test_the_readme_in_process_example_prints_what_the_readme_shows() -> None:
    section = README.read_text().split("### In process, without a database", 1)[1]
    script, output = re.findall(r"```(?:python)?\n(.*?)```", section, flags=re.DOTALL)[:2]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == output


class Picky(BaseModel):
    """Its validator raises RuntimeError for 1, KeyError for 2, SystemExit for anything else."""

    x: int

    @field_validator("x")
    @classmethod
    def _boom(cls, value: int) -> int:
        raise {1: RuntimeError, 2: KeyError}.get(value, SystemExit)("validator blew up")


async def test_a_validator_raising_anything_and_a_handler_raising_systemexit_are_failures() -> None:
    registry = pgqueue.Registry()

    @registry.on("picky", retry=QUICK)
    async def picky(payload: Picky) -> None:
        raise AssertionError("never runs")

    @registry.on("exits", retry=QUICK)
    async def exits(payload: dict[str, Any]) -> None:
        raise SystemExit(2)

    bus = pgqueue.InProcess(registry)
    for x in (1, 2, 3):
        await bus.publish("picky", {"x": x})
    await bus.publish("exits", {})
    results = {(r.event_type, r.payload.get("x")): r for r in await drain(bus)}
    errors = {key: next(iter(r.handlers.values())).error for key, r in results.items()}
    assert {r.state for r in results.values()} == {pgqueue.EventState.DEAD}
    suffix = " (raised while validating the payload as Picky)"
    assert errors[("picky", 1)] == "RuntimeError: validator blew up" + suffix
    assert errors[("picky", 2)] == "KeyError: 'validator blew up'" + suffix
    assert errors[("picky", 3)] == "SystemExit: validator blew up" + suffix
    assert errors[("exits", None)] == "SystemExit: 2"
    assert results[("exits", None)].handlers["exits"].attempts == 3
