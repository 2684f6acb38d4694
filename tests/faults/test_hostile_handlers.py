"""Nothing a handler or its payload model raises stops a worker (issue 11, items 1 and 2).

Real worker processes (two of them, so a bug that kills workers shows as both dying), real
rows. Handlers: tests/faults/fault_handlers.py (``fault.model`` has a validator that raises what
the payload names; ``"raise"`` makes a handler raise any builtin exception class).
"""

from __future__ import annotations

import json

import asyncpg

import pgqueue
from tests.faults.conftest import WorkerProcess, Workers
from tests.helpers import wait_for

# pydantic wraps only ValueError and AssertionError from a validator; these come out as they are.
VALIDATOR_ERRORS = [
    "RuntimeError",
    "TypeError",
    "KeyError",
    "AttributeError",
    "ZeroDivisionError",
    "SystemExit",
    "KeyboardInterrupt",
    "GeneratorExit",
]
HANDLER_EXITS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"]


async def settle(conn: asyncpg.Connection, ids: list[int], alive: list[WorkerProcess]) -> None:
    """Wait until no event of ``ids`` is pending or running; fail fast if a worker exits."""

    async def settled() -> bool:
        for worker in alive:
            assert worker.alive, f"worker {worker.pid} exited:\n{worker.stderr()[-3000:]}"
        left = await conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE id = ANY($1) AND state IN "
            "('pending', 'running')",
            ids,
        )
        return bool(left == 0)

    await wait_for(settled, timeout=60, interval=0.1, message="events left unsettled")


async def outcome(conn: asyncpg.Connection, event_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT state, attempt, last_error, handlers FROM pgqueue.outbox WHERE id = $1", event_id
    )
    assert row is not None
    return row


async def good_events(conn: asyncpg.Connection, n: int) -> list[int]:
    return [await pgqueue.enqueue(conn, "fault", {"n": i}) for i in range(n)]


async def assert_all_done(conn: asyncpg.Connection, ids: list[int]) -> None:
    rows = await conn.fetch("SELECT id, state, attempt FROM pgqueue.outbox WHERE id = ANY($1)", ids)
    assert {(r["state"], r["attempt"]) for r in rows} == {("done", 1)}, rows
    assert await conn.fetchval("SELECT count(*) FROM fault_effects WHERE event_id = ANY($1)", ids)
    assert await conn.fetchval(
        "SELECT count(*) FROM fault_log WHERE event_id = ANY($1)", ids
    ) == len(ids)  # every good event ran exactly once: no worker died under it


async def test_a_payload_model_raising_anything_is_dead_at_once_and_no_worker_stops(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    bad = {
        name: await pgqueue.enqueue(fconn, "fault.model", {"validator_raises": name})
        for name in VALIDATOR_ERRORS
    }
    good = await good_events(fconn, 40)
    fine = await pgqueue.enqueue(fconn, "fault.model", {"validator_raises": None})
    pair = [workers.start(db_dsn, lease=5), workers.start(db_dsn, lease=5)]
    await settle(fconn, [*bad.values(), *good, fine], pair)

    for name, event_id in bad.items():
        row = await outcome(fconn, event_id)
        # Dead at the first claim, with the validator's own error (not "gave up after 3").
        assert (row["state"], row["attempt"]) == ("dead", 1), (name, dict(row))
        expected = {"SystemExit": "2", "KeyError": "'validator blew up'"}.get(
            name, "validator blew up"
        )
        assert row["last_error"].startswith(f"m: {name}: {expected}"), row["last_error"]
        assert "raised while validating the payload as Hostile" in row["last_error"]
        record = json.loads(row["handlers"])["m"]
        assert (record["state"], record["attempts"]) == ("dead", 1)
    # The handler never ran for them; every other event ran once and is done.
    assert not await fconn.fetchval(
        "SELECT count(*) FROM fault_log WHERE event_id = ANY($1)", list(bad.values())
    )
    await assert_all_done(fconn, [*good, fine])
    assert all(w.alive for w in pair)


async def test_a_handler_raising_systemexit_or_keyboardinterrupt_fails_and_the_worker_goes_on(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    bad = {name: await pgqueue.enqueue(fconn, "fault", {"raise": name}) for name in HANDLER_EXITS}
    good = await good_events(fconn, 40)
    pair = [workers.start(db_dsn, lease=5), workers.start(db_dsn, lease=5)]
    await settle(fconn, [*bad.values(), *good], pair)

    for name, event_id in bad.items():
        row = await outcome(fconn, event_id)
        # Three in-process attempts (the QUICK policy) under one claim, each a plain failure.
        assert (row["state"], row["attempt"]) == ("dead", 1), (name, dict(row))
        expected = "2" if name == "SystemExit" else "handler raised"
        assert row["last_error"] == f"a: {name}: {expected}"
        runs = await fconn.fetch("SELECT pid FROM fault_log WHERE event_id = $1", event_id)
        assert len(runs) == 3 and len({r["pid"] for r in runs}) == 1
    await assert_all_done(fconn, good)
    assert all(w.alive for w in pair)

    # Only a signal stops the worker: SIGTERM, and it exits 0.
    for worker in pair:
        worker.signal(15)
    assert [await w.wait_exit() for w in pair] == [0, 0]


async def test_a_handler_blocking_the_loop_costs_no_lease_and_dies_of_its_real_cause(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    # time.sleep(2.5) in an async handler, with 1 s leases and a 1 s handler timeout; the
    # innocent event is claimed with it and waits for the loop. A second worker rescues
    # expired leases every 0.2 s: before the stall guard, both events were rescued onto it
    # (the innocent ran twice) and the blocker ended "gave up ... never finished".
    blocker = await pgqueue.enqueue(fconn, "fault.block", {"block": 2.5})
    innocent = await pgqueue.enqueue(fconn, "fault", {"sleep": 0.2})
    first = workers.start(db_dsn)
    await first.wait_started()
    second = workers.start(db_dsn)
    await settle(fconn, [blocker, innocent], [first, second])

    dead = await outcome(fconn, blocker)
    assert dead["state"] == "dead", dict(dead)
    assert dead["last_error"].startswith("a: LoopBlocked: handler a blocked the event loop for "), (
        dead["last_error"]
    )
    assert "past its timeout of 1s" in dead["last_error"]
    runs = await fconn.fetch("SELECT pid FROM fault_log WHERE event_id = $1", blocker)
    assert [r["pid"] for r in runs] == [first.pid] * 3  # never rescued: one worker, 3 tries
    innocent_runs = await fconn.fetch("SELECT pid FROM fault_log WHERE event_id = $1", innocent)
    assert [r["pid"] for r in innocent_runs] == [first.pid]  # ran once: its lease held
    assert (await outcome(fconn, innocent))["state"] == "done"
    assert first.alive and second.alive
