"""Plain-``def`` handlers: a thread pool, never the event loop; same retries, timeouts, dead
state and metrics as async handlers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import asyncpg
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tenacity import stop_after_attempt

import pgqueue
from tests.helpers import wait_for
from tests.integration.core_support import QUICK, run_burst


async def _states(conn: asyncpg.Connection, event_type: str) -> Counter[str]:
    rows = await conn.fetch(
        "SELECT state, count(*) AS n FROM pgqueue.outbox WHERE event_type = $1 GROUP BY state",
        event_type,
    )
    return Counter({r["state"]: r["n"] for r in rows})


async def test_a_sync_handler_blocking_past_its_lease_loses_no_lease(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A sync handler blocks for more than three leases while async events keep completing on
    the same worker; a second worker rescues expired leases every 0.1 s and finds none."""
    lease = 1.0
    started, gate, finished = threading.Event(), threading.Event(), threading.Event()
    calls: Counter[str] = Counter()
    began: list[float] = []

    registry = pgqueue.Registry()

    @registry.on("report.build", timeout=60)
    def build(payload: dict[str, Any]) -> None:  # blocks its thread, never the loop
        calls["report"] += 1
        began.append(time.monotonic())
        started.set()
        gate.wait(60)
        finished.set()

    @registry.on("order.placed")
    async def fulfil(payload: dict[str, Any]) -> None:
        calls["order"] += 1

    rescuer_registry = pgqueue.Registry()

    @rescuer_registry.on("never.sent")
    async def nothing(payload: dict[str, Any]) -> None: ...

    settings = pgqueue.WorkerSettings(lease_seconds=lease, poll_interval=0.1, sync_threads=2)
    worker = pgqueue.Worker(db_dsn, registry, settings)
    rescuer = pgqueue.Worker(
        db_dsn,
        rescuer_registry,
        pgqueue.WorkerSettings(lease_seconds=lease, poll_interval=0.1, rescue_interval=0.1),
    )
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(rescuer.run())]
    try:
        report = await pgqueue.enqueue(conn, "report.build", {})

        async def is_started() -> bool:
            return started.is_set()

        await wait_for(is_started, 30, message="the sync handler never started")
        await pgqueue.enqueue_many(
            conn, [pgqueue.Event(event_type="order.placed", payload={"n": n}) for n in range(50)]
        )

        async def orders_done() -> bool:
            return (await _states(conn, "order.placed"))["done"] == 50

        await wait_for(orders_done, 30, message="async events did not complete meanwhile")
        assert not finished.is_set()  # all 50 completed while the sync handler was blocked

        async def past_three_leases() -> bool:
            return time.monotonic() - began[0] > 3 * lease

        await wait_for(past_three_leases, 30)
        gate.set()

        async def report_done() -> bool:
            return (await _states(conn, "report.build"))["done"] == 1

        await wait_for(report_done, 30, message="the sync handler's event never completed")
    finally:
        gate.set()
        worker.request_stop()
        rescuer.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    row = await conn.fetchrow(
        "SELECT attempt, last_error, handlers FROM pgqueue.outbox WHERE id = $1", report
    )
    assert (row["attempt"], row["last_error"], row["handlers"]) == (1, None, None)
    assert calls == {"report": 1, "order": 50}
    assert worker.stats.lost_leases == 0 and rescuer.stats.rescued == 0


def _runs(metrics: pgqueue.Metrics, handler: str) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pgqueue_handler_runs_total" and sample.labels["handler"] == handler:
                out[sample.labels["outcome"]] = sample.value
    return out


async def test_many_sync_runs_with_failures_retries_timeouts_and_dead(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """600 events, each with a sync and an async handler, on 4 threads: failures retried,
    timeouts recorded (their threads run on), poison events dead; all counted alike."""
    lock = threading.Lock()
    calls: Counter[int] = Counter()
    threads_seen: set[str] = set()
    running = [0, 0]  # now, peak

    def attempt_of(event_id: int) -> int:
        with lock:
            calls[event_id] += 1
            running[0] += 1
            running[1] = max(running[1], running[0])
            threads_seen.add(threading.current_thread().name)
            return calls[event_id]

    registry = pgqueue.Registry()

    @registry.on("job.run", retry=QUICK, timeout=0.3)
    def work(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        attempt = attempt_of(ctx.event_id)
        try:
            n = payload["n"]
            if n % 10 == 0:
                raise ValueError(f"job {n} is poison")
            if n % 3 == 0 and attempt == 1:
                raise ConnectionError("flaky upstream")
            if n % 50 == 7 and attempt == 1:
                time.sleep(0.8)  # past its timeout: the attempt fails, the thread runs on
        finally:
            with lock:
                running[0] -= 1

    @registry.on("job.hang", retry=pgqueue.RetryPolicy(stop=stop_after_attempt(1)), timeout=0.2)
    def stuck(payload: dict[str, Any]) -> None:
        attempt_of(0)
        try:
            time.sleep(0.6)  # every attempt times out; the thread still ends by itself
        finally:
            with lock:
                running[0] -= 1

    @registry.on("job.run", name="audit")
    async def audit(payload: dict[str, Any]) -> None: ...

    ids = await pgqueue.enqueue_many(
        conn, [pgqueue.Event(event_type="job.run", payload={"n": n}) for n in range(1, 601)]
    )
    hang = await pgqueue.enqueue(conn, "job.hang", {})
    metrics = pgqueue.Metrics()
    settings = pgqueue.WorkerSettings(burst=True, concurrency=50, sync_threads=4)
    stats = await asyncio.wait_for(
        pgqueue.Worker(db_dsn, registry, settings, metrics=metrics).run(), 120
    )

    async def threads_idle() -> bool:  # the timed-out calls finish on their own
        return running[0] == 0

    await wait_for(threads_idle, 10)
    by_n = {event_id: n for n, event_id in enumerate(ids, 1)}
    poison = {i for i, n in by_n.items() if n % 10 == 0}
    twice = {i for i, n in by_n.items() if n % 10 and (n % 3 == 0 or n % 50 == 7)}
    assert calls == {0: 1} | {i: 3 if i in poison else 2 if i in twice else 1 for i in ids}
    assert await _states(conn, "job.run") == {"dead": len(poison), "done": 600 - len(poison)}
    assert stats.dead == len(poison) + 1  # and job.hang
    assert running[1] <= 4 and threads_seen <= {f"pgqueue-sync-{i}" for i in range(4)}
    rows = await conn.fetch(
        "SELECT handler, state, attempts, last_error FROM pgqueue.handler_states"
        " WHERE event_id = ANY($1::bigint[])",
        [i for i, n in by_n.items() if n in (10, 7, 3)],
    )
    states = {(r["handler"], r["state"], r["attempts"], r["last_error"]) for r in rows}
    assert ("work", "dead", 3, "ValueError: job 10 is poison") in states
    assert ("audit", "done", 1, None) in states
    hung = await conn.fetchrow("SELECT state, last_error FROM pgqueue.outbox WHERE id = $1", hang)
    assert dict(hung) == {
        "state": "dead",
        "last_error": "stuck: TimeoutError: handler exceeded its timeout of 0.2s",
    }
    runs = _runs(metrics, "work")
    assert runs == {
        "done": 600 - len(poison),
        "retry": len(twice) + 2 * len(poison),
        "dead": len(poison),
    }


async def test_in_process_runs_sync_handlers_too() -> None:
    registry = pgqueue.Registry()
    seen: list[str] = []

    @registry.on("greet")
    def greet(payload: dict[str, Any]) -> None:
        seen.append(threading.current_thread().name)

    bus = pgqueue.InProcess(registry)
    await bus.publish("greet", {})
    [result] = await bus.drain()
    assert result.state == pgqueue.EventState.DONE
    assert seen and seen[0] != threading.current_thread().name


async def test_a_sync_handler_runs_on_a_plain_burst_worker(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = pgqueue.Registry()
    names: list[str] = []

    @registry.on("ping")
    def ping(payload: dict[str, Any]) -> None:
        names.append(threading.current_thread().name)

    await pgqueue.enqueue(conn, "ping", {})
    stats = await run_burst(db_dsn, registry)
    assert stats.done == 1 and names == ["pgqueue-sync-0"]


async def test_shutdown_hands_back_a_sync_handler_that_is_still_running(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Past the shutdown timeout a running sync handler is handed back (attempt refunded) and
    the worker stops, although its thread cannot be stopped and is still blocked."""
    started, gate = threading.Event(), threading.Event()
    registry = pgqueue.Registry()

    @registry.on("slow.sync")
    def slow(payload: dict[str, Any]) -> None:
        started.set()
        gate.wait(60)

    event_id = await pgqueue.enqueue(conn, "slow.sync", {})
    settings = pgqueue.WorkerSettings(shutdown_timeout=0, poll_interval=0.1)
    worker = pgqueue.Worker(db_dsn, registry, settings)
    task = asyncio.create_task(worker.run())
    try:

        async def is_started() -> bool:
            return started.is_set()

        await wait_for(is_started, 30, message="the sync handler never started")
        worker.request_stop()
        stats = await asyncio.wait_for(task, 30)
        assert not gate.is_set()  # the worker stopped while the thread was still blocked
    finally:
        gate.set()
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    row = await conn.fetchrow("SELECT state, attempt FROM pgqueue.outbox WHERE id = $1", event_id)
    assert (row["state"], row["attempt"]) == ("pending", 0)
    assert stats.handed_back == 1
