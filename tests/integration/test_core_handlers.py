"""Running handlers: fan-out, quick and durable retries, poison, bad payloads, two workers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass

import asyncpg
import pytest
from pydantic import BaseModel
from tenacity import stop_after_attempt, wait_fixed, wait_none

import pgqueue
import pgqueue.admin
import pgqueue.errors
from pgqueue._queries import queries_for
from tests.helpers import run_cli, wait_for
from tests.integration.core_support import (
    QUICK,
    Calls,
    counting,
    handler_states,
    outbox_row,
    run_burst,
)


class Order(BaseModel):
    order_id: int
    customer_email: str


# -- 5. fan-out with quick retries ------------------------------------------------------------


async def run_until_done(
    db_dsn: str,
    registry: pgqueue.Registry,
    conn: asyncpg.Connection,
    event_id: int,
    settings: pgqueue.WorkerSettings,
    message: str,
) -> pgqueue.WorkerStats:
    """Run a long-lived worker until ``event_id`` is done (fails with ``message``), then stop it."""
    worker = pgqueue.Worker(db_dsn, registry, settings)
    running = asyncio.create_task(worker.run())
    try:

        async def done() -> bool:
            state = await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id)
            return bool(state == "done")

        await wait_for(done, timeout=15, message=message)
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, timeout=15)
    return worker.stats


async def test_fan_out_runs_every_handler_and_retries_only_the_failing_one(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Three handlers; one fails twice then succeeds in process; its siblings run once."""
    registry, calls = pgqueue.Registry(), Calls()
    flaky_attempts: list[int] = []

    async def fail_twice(ctx: pgqueue.Context) -> None:
        flaky_attempts.append(ctx.attempt)
        if ctx.attempt <= 2:
            raise RuntimeError(f"flaky failure {ctx.attempt}")

    counting(registry, calls, "order.placed", "email")
    counting(registry, calls, "order.placed", "flaky", behaviour=fail_twice, retry=QUICK)
    counting(registry, calls, "order.placed", "shipment")
    event_id = await pgqueue.enqueue(conn, "order.placed", {"order_id": 1})

    stats = await run_burst(db_dsn, registry)

    assert calls == {(event_id, "email"): 1, (event_id, "flaky"): 3, (event_id, "shipment"): 1}
    assert flaky_attempts == [1, 2, 3]
    assert (stats.claimed, stats.done, stats.retried, stats.dead) == (1, 1, 0, 0)
    row = await outbox_row(conn, event_id)
    assert row["state"] == "done"
    assert row["processed_at"] is not None
    assert row["attempt"] == 1
    assert row["last_error"] is None
    states = await handler_states(conn, event_id)
    assert {name: (s["state"], s["attempts"]) for name, s in states.items()} == {
        "email": ("done", 1),
        "flaky": ("done", 3),
        "shipment": ("done", 1),
    }
    assert states["flaky"]["last_error"] == "RuntimeError: flaky failure 2"


async def test_one_parameter_handler_receives_the_payload(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    received: list[object] = []
    registry = pgqueue.Registry()

    @registry.on("t")
    async def plain(payload: dict[str, object]) -> None:
        received.append(payload)

    await pgqueue.enqueue(conn, "t", {"nested": {"list": [1, 2.5, None, "x"]}})
    await run_burst(db_dsn, registry)
    assert received == [{"nested": {"list": [1, 2.5, None, "x"]}}]


# -- 6. durable retry -------------------------------------------------------------------------


async def test_long_wait_becomes_a_durable_retry_and_a_running_worker_finishes_it(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A wait above inline_max_wait is stored as run_at; siblings are not run again."""
    registry, calls = pgqueue.Registry(), Calls()

    async def fail_first(ctx: pgqueue.Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("payment gateway down")

    durable = pgqueue.RetryPolicy(
        stop=stop_after_attempt(5), wait=wait_fixed(0.3), inline_max_wait=0
    )
    counting(registry, calls, "order.placed", "ledger")
    counting(registry, calls, "order.placed", "charge", behaviour=fail_first, retry=durable)
    event_id = await pgqueue.enqueue(conn, "order.placed", {"order_id": 1})

    stats = await run_burst(db_dsn, registry)

    assert stats.retried == 1 and stats.done == 0
    row = await outbox_row(conn, event_id)
    assert row["state"] == "pending"
    assert await conn.fetchval("SELECT run_at > now() FROM pgqueue.outbox WHERE id = $1", event_id)
    assert row["last_error"] == "charge: ConnectionError: payment gateway down"
    assert row["handlers"]["charge"]["state"] == "pending"
    assert row["handlers"]["charge"]["attempts"] == 1
    assert row["handlers"]["charge"]["error"] == "ConnectionError: payment gateway down"
    assert row["handlers"]["ledger"]["state"] == "done"
    assert calls == {(event_id, "ledger"): 1, (event_id, "charge"): 1}

    await run_until_done(
        db_dsn,
        registry,
        conn,
        event_id,
        pgqueue.WorkerSettings(poll_interval=0.5),
        "the durable retry never ran",
    )

    assert calls == {(event_id, "ledger"): 1, (event_id, "charge"): 2}
    row = await outbox_row(conn, event_id)
    assert row["processed_at"] is not None and row["last_error"] is None
    assert row["attempt"] == 2
    assert row["handlers"]["charge"]["state"] == "done"
    assert row["handlers"]["charge"]["attempts"] == 2


async def test_delayed_event_is_not_run_before_its_time(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "h")
    later = await conn.fetchval("SELECT now() + interval '1 hour'")
    event_id = await pgqueue.enqueue(conn, "t", {}, run_at=later)
    stats = await run_burst(db_dsn, registry)
    assert stats.claimed == 0 and calls == {}
    assert (await outbox_row(conn, event_id))["state"] == "pending"


# -- 7. poison events and retry ---------------------------------------------------------------


@dataclass
class Poisoned:
    event_id: int
    calls: Calls
    cured: dict[str, bool]
    registry: pgqueue.Registry


async def _poisoned(db_dsn: str, conn: asyncpg.Connection) -> Poisoned:
    """An event whose 'poison' handler failed 3 times (dead) while 'ok' succeeded.

    Set ``cured["yes"]`` to make the poison handler succeed from then on.
    """
    registry, calls = pgqueue.Registry(), Calls()
    cured = {"yes": False}

    async def poison(ctx: pgqueue.Context) -> None:
        if not cured["yes"]:
            raise RuntimeError(f"poison pill {ctx.attempt}")

    counting(registry, calls, "order.placed", "ok")
    counting(
        registry,
        calls,
        "order.placed",
        "poison",
        behaviour=poison,
        retry=pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_none()),
    )
    event_id = await pgqueue.enqueue(conn, "order.placed", {"order_id": 1})
    stats = await run_burst(db_dsn, registry)
    assert stats.dead == 1
    return Poisoned(event_id, calls, cured, registry)


async def test_always_failing_handler_ends_dead_with_its_last_error(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    poisoned = await _poisoned(db_dsn, conn)
    event_id, calls = poisoned.event_id, poisoned.calls

    assert calls == {(event_id, "ok"): 1, (event_id, "poison"): 3}
    row = await outbox_row(conn, event_id)
    assert row["state"] == "dead"
    assert row["processed_at"] is None
    assert row["last_error"] == "poison: RuntimeError: poison pill 3"
    states = await handler_states(conn, event_id)
    assert states["poison"]["state"] == "dead"
    assert states["poison"]["attempts"] == 3
    assert states["poison"]["last_error"] == "RuntimeError: poison pill 3"
    assert (states["ok"]["state"], states["ok"]["attempts"]) == ("done", 1)
    report = await pgqueue.admin.status(conn)
    assert report.dead_handlers == [("order.placed", "poison", 1)]


async def test_retry_by_id_reruns_only_the_dead_handler(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    poisoned = await _poisoned(db_dsn, conn)
    event_id, calls, cured, registry = (
        poisoned.event_id,
        poisoned.calls,
        poisoned.cured,
        poisoned.registry,
    )
    other = await pgqueue.enqueue(conn, "unrelated", {})
    await conn.execute("UPDATE pgqueue.outbox SET state = 'dead' WHERE id = $1", other)

    assert await pgqueue.admin.retry(conn, ids=[event_id]) == [event_id]

    row = await outbox_row(conn, event_id)
    assert (row["state"], row["last_error"]) == ("pending", None)
    assert row["handlers"]["poison"]["state"] == "pending"
    assert row["handlers"]["ok"]["state"] == "done"
    assert (await outbox_row(conn, other))["state"] == "dead"

    cured["yes"] = True
    await run_burst(db_dsn, registry)

    assert calls == {(event_id, "ok"): 1, (event_id, "poison"): 4}
    row = await outbox_row(conn, event_id)
    assert row["state"] == "done" and row["processed_at"] is not None
    assert row["handlers"]["poison"]["state"] == "done"
    assert row["handlers"]["poison"]["attempts"] == 1


async def test_retry_of_an_event_that_is_not_dead_changes_nothing(
    conn: asyncpg.Connection,
) -> None:
    event_id = await pgqueue.enqueue(conn, "t", {})
    assert await pgqueue.admin.retry(conn, ids=[event_id]) == []
    assert await pgqueue.admin.retry(conn) == []
    assert (await outbox_row(conn, event_id))["state"] == "pending"


async def test_cli_retry_by_id_sends_the_dead_event_back(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    poisoned = await _poisoned(db_dsn, conn)
    event_id, calls, cured, registry = (
        poisoned.event_id,
        poisoned.calls,
        poisoned.cured,
        poisoned.registry,
    )

    shown = await asyncio.to_thread(run_cli, "status", "--dsn", db_dsn)
    assert shown.returncode == 0, shown.stderr
    dead_table = shown.stdout.split("\n\n")[1].splitlines()
    assert dead_table[0].split() == ["event", "type", "dead", "handler", "events"]
    assert dead_table[1].split() == ["order.placed", "poison", "1"]

    result = await asyncio.to_thread(run_cli, "retry", "--id", str(event_id), "--dsn", db_dsn)

    assert result.returncode == 0, result.stderr
    assert "1 dead event(s) sent back to pending" in result.stdout
    assert (await outbox_row(conn, event_id))["state"] == "pending"
    cured["yes"] = True
    await run_burst(db_dsn, registry)
    assert calls == {(event_id, "ok"): 1, (event_id, "poison"): 4}
    assert (await outbox_row(conn, event_id))["state"] == "done"


async def test_retry_of_one_handler_leaves_other_dead_handlers_dead(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    cured: set[str] = set()

    async def fail_unless_cured(ctx: pgqueue.Context) -> None:
        if ctx.handler not in cured:
            raise pgqueue.Discard(f"{ctx.handler} gives up")

    counting(registry, calls, "t", "a", behaviour=fail_unless_cured)
    counting(registry, calls, "t", "b", behaviour=fail_unless_cured)
    event_id = await pgqueue.enqueue(conn, "t", {})
    await run_burst(db_dsn, registry)
    assert (await outbox_row(conn, event_id))["state"] == "dead"

    cured.update({"a", "b"})
    assert await pgqueue.admin.retry(conn, handler="a") == [event_id]
    await run_burst(db_dsn, registry)

    assert calls == {(event_id, "a"): 2, (event_id, "b"): 1}
    row = await outbox_row(conn, event_id)
    assert row["state"] == "dead"
    assert row["handlers"]["a"]["state"] == "done"
    assert row["handlers"]["b"]["state"] == "dead"


# -- 8. bad payloads and other immediate deaths -----------------------------------------------


async def test_payload_that_fails_validation_is_dead_at_once_and_siblings_still_run(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    typed_calls: list[Order] = []

    @registry.on("order.placed")
    async def typed(order: Order, ctx: pgqueue.Context) -> None:
        typed_calls.append(order)

    counting(registry, calls, "order.placed", "plain")
    event_id = await pgqueue.enqueue(
        conn, "order.placed", {"order_id": "SECRET-CARD-4111", "customer_email": "a@b.c"}
    )

    await run_burst(db_dsn, registry)

    assert typed_calls == []
    assert calls == {(event_id, "plain"): 1}
    states = await handler_states(conn, event_id)
    assert (states["typed"]["state"], states["typed"]["attempts"]) == ("dead", 1)
    error = states["typed"]["last_error"]
    assert "order_id" in error and "Order" in error
    assert "SECRET-CARD-4111" not in error
    assert states["plain"]["state"] == "done"
    row = await outbox_row(conn, event_id)
    assert row["state"] == "dead"
    assert "SECRET-CARD-4111" not in row["last_error"]


async def test_valid_payload_reaches_the_handler_as_a_model(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = pgqueue.Registry()
    received: list[Order] = []

    @registry.on("order.placed")
    async def typed(order: Order) -> None:
        received.append(order)

    await pgqueue.enqueue(conn, "order.placed", Order(order_id=5, customer_email="a@b.c"))
    await run_burst(db_dsn, registry)
    assert received == [Order(order_id=5, customer_email="a@b.c")]


async def test_discard_is_dead_at_once_with_its_message(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()

    async def discard(ctx: pgqueue.Context) -> None:
        raise pgqueue.Discard("customer 9 was deleted")

    counting(registry, calls, "t", "h", behaviour=discard)
    event_id = await pgqueue.enqueue(conn, "t", {})
    await run_burst(db_dsn, registry)
    assert calls == {(event_id, "h"): 1}
    states = await handler_states(conn, event_id)
    assert states["h"] == {
        "handler": "h",
        "state": "dead",
        "attempts": 1,
        "last_error": "Discard: customer 9 was deleted",
    }


async def test_handler_over_its_timeout_fails_and_ends_dead(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = pgqueue.Registry()
    started: list[int] = []

    async def hang(payload: dict[str, object], ctx: pgqueue.Context) -> None:
        started.append(ctx.attempt)
        await asyncio.Event().wait()

    registry.add("t", hang, timeout=0.05, retry=QUICK)
    event_id = await pgqueue.enqueue(conn, "t", {})
    await run_burst(db_dsn, registry)
    assert started == [1, 2, 3]
    states = await handler_states(conn, event_id)
    assert (states["hang"]["state"], states["hang"]["attempts"]) == ("dead", 3)
    assert "exceeded its timeout of 0.05s" in states["hang"]["last_error"]


async def test_claims_that_never_wrote_back_count_as_attempts(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Two earlier claims died with their worker: a 2-attempt policy gives up unrun."""
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "crashy", retry=pgqueue.RetryPolicy(stop=stop_after_attempt(2)))
    counting(registry, calls, "t", "fine")
    event_id = await pgqueue.enqueue(conn, "t", {})
    await conn.execute("UPDATE pgqueue.outbox SET attempt = 2 WHERE id = $1", event_id)

    await run_burst(db_dsn, registry)

    assert calls == {(event_id, "fine"): 1}
    states = await handler_states(conn, event_id)
    assert (states["crashy"]["state"], states["crashy"]["attempts"]) == ("dead", 2)
    assert "gave up after 2 attempts" in states["crashy"]["last_error"]
    assert states["fine"]["state"] == "done"


# -- 9. two workers ---------------------------------------------------------------------------


async def test_two_workers_never_run_one_event_handler_pair_twice(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    n = 2000
    registry, calls = pgqueue.Registry(), Calls()

    async def yield_once(ctx: pgqueue.Context) -> None:
        await asyncio.sleep(0)

    counting(registry, calls, "order.placed", "email", behaviour=yield_once)
    counting(registry, calls, "order.placed", "shipment", behaviour=yield_once)
    ids = await pgqueue.enqueue_many(
        conn, [pgqueue.Event(event_type="order.placed", payload={"n": i}) for i in range(n)]
    )
    settings = pgqueue.WorkerSettings(burst=True, batch_size=50, concurrency=20)
    workers = [pgqueue.Worker(db_dsn, registry, settings) for _ in range(2)]

    first, second = await asyncio.wait_for(
        asyncio.gather(workers[0].run(), workers[1].run()), timeout=60
    )

    assert first.claimed > 0 and second.claimed > 0, (first, second)
    assert first.claimed + second.claimed == n
    expected = Counter({(i, h): 1 for i in ids for h in ("email", "shipment")})
    assert calls == expected
    summary = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE state = 'done' AND processed_at IS NOT NULL) AS done,"
        " count(*) FILTER (WHERE attempt <> 1) AS reclaimed FROM pgqueue.outbox"
    )
    assert (summary["done"], summary["reclaimed"]) == (n, 0)


# -- registry changes and queues --------------------------------------------------------------


async def test_handler_added_later_starts_at_its_first_attempt(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Deploy a new handler, retry a dead event: the new handler gets its own full budget."""
    calls = Calls()
    broken = {"yes": True}

    async def fail_while_broken(ctx: pgqueue.Context) -> None:
        if broken["yes"]:
            raise RuntimeError("downstream down")

    # Durable retries with no wait: each attempt is its own claim, as in production.
    durable = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_none(), inline_max_wait=-1)
    old = pgqueue.Registry()
    counting(old, calls, "t", "a")
    counting(old, calls, "t", "b", behaviour=fail_while_broken, retry=durable)
    event_id = await pgqueue.enqueue(conn, "t", {})
    await run_burst(db_dsn, old)
    row = await outbox_row(conn, event_id)
    assert (row["state"], row["attempt"]) == ("dead", 3)

    new = pgqueue.Registry()
    counting(new, calls, "t", "a")
    counting(new, calls, "t", "b", behaviour=fail_while_broken, retry=durable)
    attempts_seen: list[int] = []

    async def remember(ctx: pgqueue.Context) -> None:
        attempts_seen.append(ctx.attempt)

    counting(new, calls, "t", "c", behaviour=remember, retry=durable)
    broken["yes"] = False
    await pgqueue.admin.retry(conn, ids=[event_id])
    await run_burst(db_dsn, new)

    assert calls == {(event_id, "a"): 1, (event_id, "b"): 4, (event_id, "c"): 1}
    assert attempts_seen == [1]
    row = await outbox_row(conn, event_id)
    assert row["state"] == "done"
    assert row["handlers"]["c"]["attempts"] == 1


async def test_worker_serves_only_its_queues(db_dsn: str, conn: asyncpg.Connection) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "h")
    default_id = await pgqueue.enqueue(conn, "t", {})
    email_id = await pgqueue.enqueue(conn, "t", {}, queue="emails")
    other_id = await pgqueue.enqueue(conn, "t", {}, queue="other")

    await run_burst(db_dsn, registry)
    assert calls == {(default_id, "h"): 1}

    await run_burst(db_dsn, registry, queues=("emails", "other"))
    assert calls == {(default_id, "h"): 1, (email_id, "h"): 1, (other_id, "h"): 1}


async def test_worker_without_handlers_refuses_to_start(db_dsn: str) -> None:
    with pytest.raises(pgqueue.errors.RegistryError, match="no handlers"):
        await run_burst(db_dsn, pgqueue.Registry())


async def test_sleeping_worker_is_woken_by_notify(db_dsn: str, conn: asyncpg.Connection) -> None:
    """With a one-minute poll interval, only NOTIFY can make this finish in time."""
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "h")
    worker = pgqueue.Worker(db_dsn, registry, pgqueue.WorkerSettings(poll_interval=60))
    running = asyncio.create_task(worker.run())
    try:

        async def listening() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND query LIKE 'LISTEN%'"
                )
            )

        await wait_for(listening, message="the worker never started listening")
        event_id = await pgqueue.enqueue(conn, "t", {})

        async def handled() -> bool:
            return calls[(event_id, "h")] == 1

        await wait_for(handled, timeout=20, message="the worker slept through the NOTIFY")
    finally:
        worker.request_stop()
        await asyncio.wait_for(running, timeout=15)
    assert calls == {(event_id, "h"): 1}


async def test_handler_raising_cancelled_error_fails_like_any_error(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Awaiting a future someone else cancelled is a handler failure, not a shutdown."""
    registry, calls = pgqueue.Registry(), Calls()

    async def await_cancelled_future(ctx: pgqueue.Context) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    counting(registry, calls, "t", "h", behaviour=await_cancelled_future, retry=QUICK)
    event_id = await pgqueue.enqueue(conn, "t", {})

    await run_burst(db_dsn, registry, timeout=10, concurrency=2)

    assert calls == {(event_id, "h"): 3}
    states = await handler_states(conn, event_id)
    assert (states["h"]["state"], states["h"]["attempts"]) == ("dead", 3)
    assert "CancelledError" in states["h"]["last_error"]


# -- rescued leases ---------------------------------------------------------------------------


async def _claimed_by_a_dead_worker(conn: asyncpg.Connection) -> int:
    """An event claimed under a 0.05 s lease by a 'worker' that then vanished."""
    event_id = await pgqueue.enqueue(conn, "t", {})
    rows = await queries_for("pgqueue").core.claim(
        conn, "default", ["t"], 10, uuid.uuid4(), "ghost-worker", 0.05
    )
    assert [r.id for r in rows] == [event_id]
    return event_id


async def _run_until_done(
    db_dsn: str, registry: pgqueue.Registry, conn: asyncpg.Connection, event_id: int
) -> None:
    settings = pgqueue.WorkerSettings(rescue_interval=0.05, poll_interval=0.1)
    stats = await run_until_done(
        db_dsn, registry, conn, event_id, settings, "the expired lease was never rescued"
    )
    assert stats.rescued == 1


async def test_expired_lease_is_rescued_and_the_event_runs(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "h")
    event_id = await _claimed_by_a_dead_worker(conn)

    await _run_until_done(db_dsn, registry, conn, event_id)

    assert calls == {(event_id, "h"): 1}
    row = await outbox_row(conn, event_id)
    assert row["attempt"] == 2
    assert row["processed_at"] is not None and row["lease_token"] is None


async def test_rescued_event_that_succeeds_has_no_last_error(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "t", "h")
    event_id = await _claimed_by_a_dead_worker(conn)

    await _run_until_done(db_dsn, registry, conn, event_id)

    assert (await outbox_row(conn, event_id))["last_error"] is None


# -- shutdown ---------------------------------------------------------------------------------


async def test_stop_hands_back_unfinished_work_with_the_attempt_refunded(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Past the shutdown timeout a running handler is cancelled and its event handed back."""
    registry, calls = pgqueue.Registry(), Calls()
    started = asyncio.Event()
    release = {"hang": True}

    async def hang_first_time(ctx: pgqueue.Context) -> None:
        if release["hang"]:
            started.set()
            await asyncio.Event().wait()

    counting(registry, calls, "t", "slow", behaviour=hang_first_time)
    counting(registry, calls, "t", "quick")
    event_id = await pgqueue.enqueue(conn, "t", {})
    worker = pgqueue.Worker(db_dsn, registry, pgqueue.WorkerSettings(shutdown_timeout=0.1))
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), timeout=10)
    worker.request_stop()
    stats = await asyncio.wait_for(running, timeout=15)

    assert stats.handed_back == 1
    row = await outbox_row(conn, event_id)
    assert (row["state"], row["attempt"], row["lease_token"]) == ("pending", 0, None)
    assert row["handlers"]["quick"]["state"] == "done"
    assert row["handlers"]["slow"]["state"] == "pending"
    assert row["handlers"]["slow"]["attempts"] == 0

    release["hang"] = False
    attempts: list[int] = []

    async def remember(ctx: pgqueue.Context) -> None:
        attempts.append(ctx.attempt)

    again = pgqueue.Registry()
    counting(again, calls, "t", "slow", behaviour=remember)
    counting(again, calls, "t", "quick")
    await run_burst(db_dsn, again)

    assert calls == {(event_id, "slow"): 2, (event_id, "quick"): 1}
    assert attempts == [1]
    row = await outbox_row(conn, event_id)
    assert (row["state"], row["attempt"]) == ("done", 1)
