"""Fault tests (issue 3): real worker processes started through the CLI, real faults, rows.

Handlers and their payload switches: tests/faults/fault_handlers.py. ``fault_log`` counts
executions, ``fault_effects`` counts effects. Leases are 1 s (heartbeat 0.3 s, rescue every
0.2 s) unless a test says otherwise, so a lost worker's events come back within ~1.5 s.
"""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

import asyncpg
import pytest

import pgqueue
from tests.faults.conftest import WorkerProcess, Workers
from tests.helpers import wait_for

KILL = signal.SIGKILL


async def enqueue(conn: asyncpg.Connection, payload: dict[str, Any], type_: str = "fault") -> int:
    return await pgqueue.enqueue(conn, type_, payload)


async def row(conn: asyncpg.Connection, event_id: int) -> asyncpg.Record:
    record = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", event_id)
    assert record is not None, f"event {event_id} is missing"
    return record


async def wait_state(
    conn: asyncpg.Connection, event_id: int, *states: str, timeout: float = 20.0
) -> asyncpg.Record:
    """Wait until the event is in one of ``states``; return its row."""

    async def reached() -> bool:
        return (await row(conn, event_id))["state"] in states

    await wait_for(reached, timeout=timeout, message=f"event {event_id} never reached {states}")
    return await row(conn, event_id)


async def runs(conn: asyncpg.Connection, event_id: int) -> list[asyncpg.Record]:
    """The event's executions (fault_log rows), in order."""
    return await conn.fetch(
        "SELECT handler, pid, attempt FROM fault_log WHERE event_id = $1 ORDER BY id", event_id
    )


async def effects(conn: asyncpg.Connection, event_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT handler, pid, attempt FROM fault_effects WHERE event_id = $1 ORDER BY handler",
        event_id,
    )


async def wait_running_in(conn: asyncpg.Connection, event_id: int, worker: WorkerProcess) -> None:
    """Wait until ``worker`` has started a handler of the event (fail fast if it exits)."""

    async def started() -> bool:
        if not worker.alive:
            raise AssertionError(f"worker {worker.pid} exited:\n{worker.stderr()[-3000:]}")
        return any(r["pid"] == worker.pid for r in await runs(conn, event_id))

    await wait_for(started, timeout=20, message=f"worker {worker.pid} never ran event {event_id}")


async def no_running(conn: asyncpg.Connection) -> None:
    left = await conn.fetch("SELECT id, leased_by FROM pgqueue.outbox WHERE state = 'running'")
    assert left == [], f"events left running: {left}"


# -- 1, 2: kill -9 -------------------------------------------------------------------------


async def test_kill9_mid_handler_another_worker_finishes_after_lease(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"sleep": 60, "faulty_runs": 1})
    first = workers.start(db_dsn)
    await wait_running_in(fconn, event, first)
    assert (await row(fconn, event))["state"] == "running"

    first.signal(KILL)
    assert await first.wait_exit() == -KILL
    second = workers.start(db_dsn)

    done = await wait_state(fconn, event, "done")
    assert [(r["pid"], r["attempt"]) for r in await runs(fconn, event)] == [
        (first.pid, 1),
        (second.pid, 2),  # the killed claim counted as an attempt
    ]
    assert [r["pid"] for r in await effects(fconn, event)] == [second.pid]
    assert done["attempt"] == 2 and done["lease_token"] is None
    await no_running(fconn)


async def test_kill9_after_effect_before_completion_reruns_but_effect_stays_single(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"crash_after_effect": True, "faulty_runs": 1})
    first = workers.start(db_dsn)
    assert await first.wait_exit() == -KILL  # it killed itself right after the effect
    assert (await row(fconn, event))["state"] == "running"  # completion never written
    assert len(await effects(fconn, event)) == 1

    second = workers.start(db_dsn)
    await wait_state(fconn, event, "done")
    assert [r["pid"] for r in await runs(fconn, event)] == [first.pid, second.pid]
    assert [r["pid"] for r in await effects(fconn, event)] == [first.pid]  # not repeated
    assert (
        await fconn.fetchval("SELECT count(*) FROM pgqueue.effects WHERE event_id = $1", event) == 1
    )
    await no_running(fconn)


# -- 3: SIGTERM --------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_sigterm_lets_in_flight_handlers_finish_and_exits_0(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers, stop: signal.Signals
) -> None:
    event = await enqueue(fconn, {"sleep": 1.5})
    worker = workers.start(db_dsn, shutdown_timeout=30)
    await wait_running_in(fconn, event, worker)

    worker.signal(stop)

    async def draining() -> bool:
        return "stopping: no new claims" in worker.stderr()

    await wait_for(draining, timeout=10, message="SIGTERM was not seen")
    after_signal = await enqueue(fconn, {})  # notified, but a stopping worker claims nothing
    assert await worker.wait_exit() == 0, worker.stderr()
    done = await row(fconn, event)
    assert done["state"] == "done" and done["attempt"] == 1
    assert len(await runs(fconn, event)) == 1
    assert len(await effects(fconn, event)) == 1
    untouched = await row(fconn, after_signal)
    assert (untouched["state"], untouched["attempt"]) == ("pending", 0)


async def test_sigterm_past_drain_timeout_hands_back_at_once_with_attempt_refunded(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # Lease 60 s: only the hand-back can explain a second worker running it within the wait.
    event = await enqueue(fconn, {"sleep": 60, "faulty_runs": 1})
    first = workers.start(db_dsn, lease=60, heartbeat=20, shutdown_timeout=0.5)
    await wait_running_in(fconn, event, first)
    assert (await row(fconn, event))["attempt"] == 1

    first.signal(signal.SIGTERM)
    assert await first.wait_exit() == 0, first.stderr()
    handed_back = await row(fconn, event)
    assert handed_back["state"] == "pending"
    assert handed_back["attempt"] == 0  # refunded
    assert handed_back["lease_token"] is None and handed_back["leased_by"] is None
    assert len(await effects(fconn, event)) == 0

    second = workers.start(db_dsn, lease=60, heartbeat=20)
    done = await wait_state(fconn, event, "done", timeout=30)
    assert [r["pid"] for r in await runs(fconn, event)] == [first.pid, second.pid]
    assert [r["pid"] for r in await effects(fconn, event)] == [second.pid]
    assert done["attempt"] == 1


async def test_second_sigterm_stops_at_once_and_hands_back(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"sleep": 300})
    worker = workers.start(db_dsn, lease=60, heartbeat=20, shutdown_timeout=300)
    await wait_running_in(fconn, event, worker)

    worker.signal(signal.SIGTERM)

    async def draining() -> bool:
        return "stopping: no new claims" in worker.stderr()

    await wait_for(draining, timeout=10, message="the first SIGTERM was not seen")
    assert worker.alive  # draining: waits for the 300 s handler
    worker.signal(signal.SIGTERM)
    # Far below the 300 s drain timeout and the 60 s lease.
    assert await worker.wait_exit(timeout=20) == 0, worker.stderr()
    handed_back = await row(fconn, event)
    assert (handed_back["state"], handed_back["attempt"]) == ("pending", 0)
    assert handed_back["lease_token"] is None


# -- 7: fencing ------------------------------------------------------------------------------


async def test_frozen_worker_cannot_overwrite_the_new_owners_outcome(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # The first run sleeps 2 s then discards (would make the event dead); re-runs succeed.
    event = await enqueue(fconn, {"sleep": 2, "discard": True, "faulty_runs": 1})
    first = workers.start(db_dsn)
    await wait_running_in(fconn, event, first)
    first.signal(signal.SIGSTOP)  # frozen: no heartbeat, its lease (1 s) runs out

    second = workers.start(db_dsn)
    await wait_state(fconn, event, "done")
    taken_over = await row(fconn, event)
    assert taken_over["attempt"] == 2

    first.signal(signal.SIGCONT)  # wakes up, finishes its sleep, reports a dead outcome

    async def lost_lease_logged() -> bool:
        return f"event {event}: lease lost before its outcome was recorded" in first.stderr()

    await wait_for(lost_lease_logged, timeout=20, message="the frozen worker logged no lost lease")
    after = await row(fconn, event)
    assert after["state"] == "done"
    assert after["processed_at"] == taken_over["processed_at"]
    assert after["attempt"] == 2 and after["handlers"] is None
    assert after["last_error"] == taken_over["last_error"]  # not the discarded run's error
    assert [r["pid"] for r in await runs(fconn, event)] == [first.pid, second.pid]
    assert [r["pid"] for r in await effects(fconn, event)] == [second.pid]
    assert first.alive and second.alive


async def test_frozen_worker_resumed_while_the_new_owner_runs_changes_nothing(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # Run 1 (the frozen worker) sleeps 2 s then discards; run 2 (the new owner) sleeps 5 s,
    # so the first wakes up, fails and reports while the second still holds the lease.
    payload = {"run_sleep": [2, 5], "discard": True, "faulty_runs": 1}
    event = await enqueue(fconn, payload)
    first = workers.start(db_dsn)
    await wait_running_in(fconn, event, first)
    first.signal(signal.SIGSTOP)
    second = workers.start(db_dsn)
    await wait_running_in(fconn, event, second)
    owned = await row(fconn, event)
    assert f":{second.pid}:" in owned["leased_by"]

    first.signal(signal.SIGCONT)

    async def lost_lease_logged() -> bool:
        return f"event {event}: lease lost before its outcome was recorded" in first.stderr()

    await wait_for(lost_lease_logged, timeout=20, message="the frozen worker logged no lost lease")
    during = await row(fconn, event)
    assert during["state"] == "running"  # not dead: the discarded outcome was fenced off
    assert during["lease_token"] == owned["lease_token"]
    assert during["attempt"] == 2 and during["handlers"] is None

    done = await wait_state(fconn, event, "done")
    assert done["attempt"] == 2
    assert [r["pid"] for r in await runs(fconn, event)] == [first.pid, second.pid]
    assert [r["pid"] for r in await effects(fconn, event)] == [second.pid]


# -- 8: heartbeat --------------------------------------------------------------------------


async def test_long_handler_whose_worker_heartbeats_is_never_rescued(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"sleep": 3})
    first = workers.start(db_dsn, lease=1, heartbeat=0.2)
    await wait_running_in(fconn, event, first)
    workers.start(db_dsn, lease=1, heartbeat=0.2)  # a second worker, rescuing every 0.2 s

    done = await wait_state(fconn, event, "done")
    assert [r["pid"] for r in await runs(fconn, event)] == [first.pid]
    assert done["attempt"] == 1 and done["last_error"] is None


# -- 10: poison ------------------------------------------------------------------------------


async def test_always_failing_handler_ends_dead_with_its_last_error(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"fail": "always"})
    workers.start(db_dsn)
    dead = await wait_state(fconn, event, "dead")
    assert len(await runs(fconn, event)) == 3  # QUICK: 3 attempts
    assert await effects(fconn, event) == []
    assert dead["last_error"] == "a: RuntimeError: fault: run 3 of a fails"
    record = json.loads(dead["handlers"])["a"]
    assert (record["state"], record["attempts"]) == ("dead", 3)
    assert record["error"] == "RuntimeError: fault: run 3 of a fails"


async def _run_workers_until_dead(
    conn: asyncpg.Connection, db_dsn: str, workers: Workers, event_id: int
) -> asyncpg.Record:
    """Start a worker, wait until it dies or the event is dead; repeat (bounded)."""
    for _ in range(8):  # 3 attempts, then a claim that declares it dead: 4 workers suffice
        worker = workers.start(db_dsn)

        async def settled_or_exited(w: Any = worker) -> bool:
            return not w.alive or (await row(conn, event_id))["state"] == "dead"

        await wait_for(settled_or_exited, timeout=30, message="worker neither died nor settled")
        if (await row(conn, event_id))["state"] == "dead":
            break
        assert await worker.wait_exit() == -KILL
    return await wait_state(conn, event_id, "dead", timeout=1)


async def test_handler_that_kills_its_worker_every_time_ends_dead(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"suicide": True})
    dead = await _run_workers_until_dead(fconn, db_dsn, workers, event)
    assert len(await runs(fconn, event)) == 3
    assert await effects(fconn, event) == []
    assert dead["attempt"] == 4  # 3 runs that killed their worker, 1 claim that gave up
    assert "gave up after 3 attempts" in dead["last_error"]
    assert json.loads(dead["handlers"])["a"]["state"] == "dead"


async def test_event_claimed_alongside_a_process_killer_is_not_declared_dead(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    poison = await enqueue(fconn, {"suicide": True})
    innocent = await enqueue(fconn, {"sleep": 0.5})  # still running when its worker dies
    await _run_workers_until_dead(fconn, db_dsn, workers, poison)
    workers.start(db_dsn)
    settled = await wait_state(fconn, innocent, "done", "dead")
    assert settled["state"] == "done", settled["last_error"]
    assert len(await effects(fconn, innocent)) == 1


# -- 9: timeouts and a blocked event loop ----------------------------------------------------


async def test_handler_past_its_timeout_is_cancelled_counted_and_retried(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # fault.timeout handlers time out after 0.5 s; the first run hangs, the retry succeeds.
    event = await enqueue(fconn, {"hang": True, "faulty_runs": 1}, "fault.timeout")
    worker = workers.start(db_dsn)
    done = await wait_state(fconn, event, "done")
    assert [r["attempt"] for r in await runs(fconn, event)] == [1, 2]
    assert [r["attempt"] for r in await effects(fconn, event)] == [2]
    record = json.loads(done["handlers"])["a"]
    assert (record["state"], record["attempts"]) == ("done", 2)  # the timeout counted
    assert record["error"] == "TimeoutError: handler exceeded its timeout of 0.5s"
    assert worker.alive


async def test_handler_that_always_hangs_ends_dead_with_a_timeout_error(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"hang": True}, "fault.timeout")
    workers.start(db_dsn)
    dead = await wait_state(fconn, event, "dead")
    assert len(await runs(fconn, event)) == 3
    assert await effects(fconn, event) == []
    assert dead["last_error"] == "a: TimeoutError: handler exceeded its timeout of 0.5s"


async def test_handler_blocking_the_event_loop_is_reported(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"block": 2, "faulty_runs": 1})  # time.sleep(2) in the loop
    worker = workers.start(db_dsn)
    await wait_state(fconn, event, "done")
    assert len(await effects(fconn, event)) == 1

    async def reported() -> bool:
        return "event loop blocked for" in worker.stderr()

    await wait_for(reported, message="the blocked event loop was not reported")
    assert worker.alive


# -- 5, 6: LISTEN lost, polling ---------------------------------------------------------------

LISTENER = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND (query LIKE 'LISTEN %' OR query = 'SELECT 1')
"""


async def listener_pids(conn: asyncpg.Connection) -> list[int]:
    """Backends of worker listeners: the LISTEN statement or the listener's probe query."""
    return [r["pid"] for r in await conn.fetch(LISTENER)]


async def test_killed_listen_connection_relistens_and_catches_up(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # Poll every 30 s: only NOTIFY or the listener's catch-up can process events within the
    # waits below.
    worker = workers.start(db_dsn, poll_interval=30)
    await worker.wait_started()

    async def one_listener() -> bool:
        return len(await listener_pids(fconn)) == 1

    await wait_for(one_listener, message="no LISTEN backend")
    [old] = await listener_pids(fconn)
    first = await enqueue(fconn, {})
    await wait_state(fconn, first, "done", timeout=15)

    assert await fconn.fetchval("SELECT pg_terminate_backend($1)", old)
    during_gap = [await enqueue(fconn, {}) for _ in range(3)]
    for event in during_gap:
        await wait_state(fconn, event, "done", timeout=15)

    async def relistening() -> bool:
        pids = await listener_pids(fconn)
        return len(pids) == 1 and pids[0] != old

    await wait_for(relistening, message="the listener did not reconnect")
    after = await enqueue(fconn, {})
    await wait_state(fconn, after, "done", timeout=15)
    assert worker.alive
    assert await fconn.fetchval("SELECT count(*) FROM fault_effects") == 5


async def test_polling_only_worker_picks_events_up(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    worker = workers.start(db_dsn, no_listen=True, poll_interval=0.3)
    await worker.wait_started()
    first = await enqueue(fconn, {})
    await wait_state(fconn, first, "done")
    later = await enqueue(fconn, {})  # the worker is idle now, waiting on its poll timer
    await wait_state(fconn, later, "done")
    assert await listener_pids(fconn) == []
    assert await fconn.fetchval("SELECT count(*) FROM fault_effects") == 2


async def test_event_whose_notification_never_comes_is_picked_up_by_polling(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    worker = workers.start(db_dsn, poll_interval=0.3)
    await worker.wait_started()
    await fconn.execute("ALTER TABLE pgqueue.outbox DISABLE TRIGGER outbox_notify")
    event = await enqueue(fconn, {})
    await wait_state(fconn, event, "done")
    assert len(await listener_pids(fconn)) == 1  # it was listening, and heard nothing


# -- 12: producer transactions ---------------------------------------------------------------


async def test_rolled_back_producer_transaction_delivers_nothing(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    workers.start(db_dsn)
    tx = fconn.transaction()
    await tx.start()
    rolled_back = await enqueue(fconn, {})
    await tx.rollback()
    async with fconn.transaction():
        kept = await enqueue(fconn, {})
        try:
            async with fconn.transaction():  # a savepoint, rolled back
                savepoint = await enqueue(fconn, {})
                raise RuntimeError("roll back to the savepoint")
        except RuntimeError:
            pass
    marker = await enqueue(fconn, {})
    await wait_state(fconn, kept, "done")
    await wait_state(fconn, marker, "done")  # events are claimed in id order: it came last
    ids = await fconn.fetch("SELECT id FROM pgqueue.outbox ORDER BY id")
    assert [r["id"] for r in ids] == [kept, marker]
    logged = await fconn.fetch("SELECT DISTINCT event_id FROM fault_log ORDER BY event_id")
    assert [r["event_id"] for r in logged] == [kept, marker]
    assert rolled_back not in (kept, marker) and savepoint not in (kept, marker)


async def test_open_producer_transaction_does_not_block_other_events(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    workers.start(db_dsn)
    producer = await asyncpg.connect(db_dsn)
    try:
        tx = producer.transaction()
        await tx.start()
        held = await enqueue(producer, {})  # the lowest id, uncommitted
        others = [await enqueue(fconn, {}) for _ in range(5)]
        for event in others:
            await wait_state(fconn, event, "done")
        assert producer.is_in_transaction()  # still open while the others were processed
        assert await fconn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE id = $1", held) == 0
        await tx.commit()
        await wait_state(fconn, held, "done")
    finally:
        await producer.close()


# -- the database refuses or cancels the worker's writes --------------------------------------

SLOW_FIRST_COMPLETION = """
CREATE SEQUENCE slow_completion_seq;
CREATE FUNCTION slow_first_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('slow_completion_seq') = 1 THEN
        PERFORM pg_sleep(60);  -- until the test cancels it
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_first_completion BEFORE UPDATE ON pgqueue.outbox FOR EACH ROW
    WHEN (NEW.state = 'done' AND OLD.payload ? 'slow_completion')
    EXECUTE FUNCTION slow_first_completion();
"""


async def test_cancelled_completion_write_does_not_stall_the_worker(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    await fconn.execute(SLOW_FIRST_COMPLETION)
    event = await enqueue(fconn, {"slow_completion": True})
    workers.start(db_dsn)
    workers.start(db_dsn)

    async def completion_waiting() -> bool:
        return bool(
            await fconn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event = 'PgSleep' AND query LIKE '%UPDATE%outbox%'"
            )
        )

    await wait_for(completion_waiting, message="the completion write never started")
    # An operator cancels the slow query, as they would a long-running statement.
    cancelled = await fconn.fetchval(
        "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event = 'PgSleep'"
    )
    assert cancelled == 1
    later = await enqueue(fconn, {})
    await wait_state(fconn, event, "done", timeout=20)
    await wait_state(fconn, later, "done", timeout=20)
    assert len(await effects(fconn, event)) == 1


async def test_worker_survives_a_read_only_window(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    worker = workers.start(db_dsn)
    first = await enqueue(fconn, {})
    await wait_state(fconn, first, "done")
    database = await fconn.fetchval("SELECT current_database()")
    # A failover lands the workers on a read-only server for a while: new sessions are
    # read-only, and the old ones are cut.
    await fconn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        await fconn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

        async def refused() -> bool:
            return "read-only" in worker.stderr() or "ReadOnly" in worker.stderr()

        await wait_for(refused, message="the worker never hit the read-only server")
    finally:
        await fconn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    later = await enqueue(fconn, {})

    async def settled() -> bool:
        assert worker.alive, worker.stderr()[-2000:]
        return (await row(fconn, later))["state"] == "done"

    await wait_for(settled, timeout=20, message="the worker did not resume")


async def test_rescue_log_names_the_dead_worker(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    event = await enqueue(fconn, {"sleep": 60, "faulty_runs": 1})
    first = workers.start(db_dsn)
    await wait_running_in(fconn, event, first)
    first.signal(KILL)
    assert await first.wait_exit() == -KILL
    second = workers.start(db_dsn)
    await wait_state(fconn, event, "done")
    rescued = [line for line in second.stderr().splitlines() if "rescued" in line]
    assert rescued and f":{first.pid}:" in rescued[0], rescued


# -- every connection of the worker is terminated mid-run -------------------------------------


async def test_worker_survives_termination_of_all_its_backends(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    worker = workers.start(db_dsn, batch_size=20)
    await worker.wait_started()
    events = [pgqueue.Event(event_type="fault.multi", payload={"sleep": 0.02})] * 200
    ids = await pgqueue.enqueue_many(fconn, events)
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    for target in (40, 120):  # twice, at two points of the run

        async def progressed(target: int = target) -> bool:
            done = "SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'"
            return bool(await fconn.fetchval(done) >= target)

        await wait_for(progressed, timeout=30, message="no progress")
        assert await fconn.fetchval(terminate) > 0

    async def all_done() -> bool:
        done = "SELECT count(*) FROM pgqueue.outbox WHERE state = 'done'"
        return bool(await fconn.fetchval(done) == len(ids))

    await wait_for(all_done, timeout=60, interval=0.1, message="events left unsettled")
    assert await fconn.fetchval("SELECT count(*) FROM fault_effects") == 3 * len(ids)
    assert worker.alive


# -- another session locks one running row ----------------------------------------------------


async def test_a_locked_row_does_not_cost_its_batch_mates_their_leases(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    locked = await enqueue(fconn, {"sleep": 3})
    other = await enqueue(fconn, {"sleep": 3})
    first = workers.start(db_dsn)
    await wait_running_in(fconn, locked, first)
    await wait_running_in(fconn, other, first)
    workers.start(db_dsn)  # a second worker, rescuing every 0.2 s

    operator = await asyncpg.connect(db_dsn)
    try:
        async with operator.transaction():  # e.g. an UPDATE typed in psql, not yet committed
            await operator.execute("SELECT 1 FROM pgqueue.outbox WHERE id = $1 FOR UPDATE", locked)

            async def other_lease_expired() -> bool:
                return bool(
                    await fconn.fetchval(
                        "SELECT lease_expires_at < now() - interval '1 second'"
                        " OR state <> 'running' FROM pgqueue.outbox WHERE id = $1",
                        other,
                    )
                )

            # The fault lasts until the other lease has been expired for 1 s (5 rescue
            # rounds), or 2.5 s if it never expires.
            with contextlib.suppress(AssertionError):
                await wait_for(other_lease_expired, timeout=2.5)
    finally:
        await operator.close()
    await wait_state(fconn, locked, "done")
    await wait_state(fconn, other, "done")
    assert [r["pid"] for r in await runs(fconn, other)] == [first.pid]


async def test_an_event_claimed_again_while_its_lost_run_still_goes_keeps_its_new_lease(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # The race behind the flaky locked-row test: a worker loses a lease (rescued elsewhere)
    # while the handler still runs, then claims the same event again. When the old run ended,
    # its refused completion removed the NEW claim from the worker's in-flight table, so the
    # new lease was never renewed: it expired, was rescued, and the event lost attempt after
    # attempt ("lease lost before its outcome was recorded", then dead or very late).
    event = await enqueue(fconn, {"run_sleep": [3, 4]})
    worker = workers.start(db_dsn)
    await wait_running_in(fconn, event, worker)
    # What another worker's rescuer does to a lease it believes expired.
    await fconn.execute(
        "UPDATE pgqueue.outbox SET state = 'pending', run_at = now(), lease_token = NULL,"
        " leased_by = NULL, lease_expires_at = NULL WHERE id = $1",
        event,
    )
    done = await wait_state(fconn, event, "done", "dead", timeout=30)
    assert done["state"] == "done", done["last_error"]
    assert [r["attempt"] for r in await runs(fconn, event)] == [1, 2]
    assert len(await effects(fconn, event)) == 1  # the old run's, through pgqueue.once
    assert worker.alive
