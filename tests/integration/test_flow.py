"""Cancel, wait and pause end to end: the CLI against real ``pgqueue worker`` processes.

The handlers (tests/integration/flow_handlers.py) write one ``flow_runs`` row per run and its
outcome; ``flow.block`` runs until the test opens ``flow_gate``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import pgqueue
import pgqueue.admin
import pgqueue.errors
from tests.faults.conftest import Workers
from tests.helpers import run_cli, wait_for
from tests.integration.flow_handlers import create_tables

HANDLERS = "tests.integration.flow_handlers:registry"
STATE = "SELECT state FROM pgqueue.outbox WHERE id = $1"
OUTCOME = "SELECT outcome FROM flow_runs WHERE event_id = $1 AND handler = $2"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """``pgqueue worker`` processes on the flow handlers; all SIGKILLed and reaped after."""
    with Workers.killed_after(tmp_path, HANDLERS) as started:
        yield started


@pytest.fixture
async def fconn(conn: asyncpg.Connection) -> asyncpg.Connection:
    """``conn`` with the handlers' tables."""
    await create_tables(conn)
    return conn


def equals(conn: asyncpg.Connection, expected: Any, sql: str, *args: Any) -> Any:
    """A wait_for predicate: the query's value is ``expected``."""

    async def check() -> bool:
        return bool(await conn.fetchval(sql, *args) == expected)

    return check


async def enqueue(
    conn: asyncpg.Connection, event_type: str, *, queue: str = "default", later: bool = False
) -> int:
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1) if later else None
    return await pgqueue.enqueue(conn, event_type, {}, queue=queue, run_at=run_at)


def cli(dsn: str, *args: str, input: str | None = None) -> Any:
    return run_cli(*args, "--dsn", dsn, input=input)


async def test_cancel_pending_events_then_wait_status_list_and_prune_see_them(
    fconn: asyncpg.Connection, db_dsn: str
) -> None:
    conn = fconn
    first = await enqueue(conn, "flow.quick", later=True)
    second = await enqueue(conn, "flow.quick", queue="other", later=True)
    done = await enqueue(conn, "flow.quick")
    await conn.execute(
        "UPDATE pgqueue.outbox SET state = 'done', processed_at = now() WHERE id = $1", done
    )

    # Preview first: counts what a filter reaches, changes nothing.
    preview = cli(db_dsn, "cancel", "--type", "flow.quick", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "2 event(s) to cancel (2 pending, 0 running)" in preview.stdout
    assert await conn.fetchval(STATE, first) == "pending"
    # A filter asks before it acts; a refusal changes nothing.
    refused = cli(db_dsn, "cancel", "--queue", "other", input="n\n")
    assert refused.returncode != 0 and await conn.fetchval(STATE, second) == "pending"

    result = cli(db_dsn, "cancel", "--queue", "other", "--reason", "customer left", "--yes")
    assert result.returncode == 0, result.stderr
    assert "1 event(s) cancelled" in result.stdout
    row = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", second)
    assert (row["state"], row["last_error"], row["attempt"]) == ("cancelled", "customer left", 0)
    # Named by --id alone: no question; the done event is left alone.
    result = cli(db_dsn, "cancel", "--id", str(first), "--id", str(done))
    assert result.returncode == 0, result.stderr
    assert "1 event(s) cancelled" in result.stdout
    assert await conn.fetchval(STATE, done) == "done"
    assert "with pgqueue cancel" in (
        await conn.fetchval("SELECT last_error FROM pgqueue.outbox WHERE id = $1", first)
    )

    assert (await pgqueue.wait(conn, first)).state == "cancelled"

    status = cli(db_dsn, "status")
    header, line = status.stdout.splitlines()[:2]
    columns, values = header.split()[2:], line.split()  # "event type" is two words
    assert values[0] == "flow.quick"
    assert values[1 + columns.index("cancelled")] == "2"
    listed = cli(db_dsn, "events", "list", "--state", "cancelled")
    assert listed.returncode == 0, listed.stderr
    assert {str(first), str(second)} <= {ln.split()[0] for ln in listed.stdout.splitlines()[1:]}

    assert await pgqueue.admin.prune(conn, dt.timedelta(0)) == 1  # the done one
    pruned = cli(db_dsn, "prune", "--older-than", "0s", "--cancelled", "--yes")
    assert pruned.returncode == 0, pruned.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


async def test_cancel_and_pause_refuse_bad_input_in_one_line(db_dsn: str) -> None:
    bare = cli(db_dsn, "cancel")
    assert bare.returncode == 2 and "say which events to cancel" in bare.stderr
    bad = cli(db_dsn, "cancel", "--queue", "no spaces", "--yes")
    assert bad.returncode == 1 and "is not a queue name" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = cli(db_dsn, "pause", "no spaces")
    assert bad.returncode == 1 and "is not a queue name" in bad.stderr


async def test_a_running_event_is_cancelled_at_the_next_heartbeat_not_failed(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = fconn
    event = await enqueue(conn, "flow.block")
    worker = workers.start(db_dsn)
    await worker.wait_started()
    await wait_for(equals(conn, "running", STATE, event), timeout=20, message="never claimed")
    await wait_for(
        equals(conn, 1, "SELECT count(*) FROM flow_runs WHERE event_id = $1 AND handler = "
               "'blocker'", event),
        timeout=20,
        message="blocker never started",
    )  # fmt: skip

    preview = cli(db_dsn, "cancel", "--type", "flow.block", "--dry-run")
    assert "1 event(s) to cancel (0 pending, 1 running)" in preview.stdout
    result = cli(db_dsn, "cancel", "--id", str(event))
    assert result.returncode == 0, result.stderr

    # The handler task itself was cancelled (it wrote so), and the outcome is 'cancelled'.
    await wait_for(
        equals(conn, "cancelled", OUTCOME, event, "blocker"),
        timeout=20,
        message="the running handler was not cancelled",
    )
    row = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", event)
    assert row["state"] == "cancelled" and row["lease_token"] is None
    assert row["attempt"] == 1  # never retried
    assert await conn.fetchval(OUTCOME, event, "sibling") == "done"
    assert (await pgqueue.wait(conn, event, timeout=5)).state == "cancelled"

    # The worker goes on: a new event runs, and the cancelled one never runs again.
    after = await enqueue(conn, "flow.quick")
    assert (await pgqueue.wait(conn, after, timeout=30)).state == "done"
    assert await conn.fetchval("SELECT count(*) FROM flow_runs WHERE event_id = $1", event) == 2
    assert worker.alive
    assert await conn.fetchval(STATE, event) == "cancelled"


async def test_wait_exits_with_a_code_per_final_state(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = fconn
    quick = await enqueue(conn, "flow.quick")
    poison = await enqueue(conn, "flow.poison")
    later = await enqueue(conn, "flow.quick", later=True)
    workers.start(db_dsn)

    done = cli(db_dsn, "wait", str(quick), "--timeout", "30")
    assert (done.returncode, done.stdout.strip()) == (0, f"event {quick}: done")
    dead = cli(db_dsn, "wait", str(poison), "--timeout", "30")
    assert dead.returncode == 3 and "poisoned on purpose" in dead.stdout
    assert await pgqueue.admin.discard(conn, ids=[poison]) == [poison]
    discarded = cli(db_dsn, "wait", str(poison))
    assert discarded.returncode == 4
    cancelled = await enqueue(conn, "flow.quick", later=True)
    await pgqueue.admin.cancel(conn, ids=[cancelled], reason="not needed")
    # Reschedule moves only pending events; a due time in the past means now.
    moved = cli(db_dsn, "reschedule", str(later), str(quick), "--delay", "0s")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines() == [
        "1 pending event(s) rescheduled",
        f"not pending (left alone): {quick}",
    ]
    assert (await pgqueue.wait(conn, later, timeout=30)).state == "done"
    assert await pgqueue.admin.reschedule(conn, [later], dt.timedelta(hours=1)) == []
    waited = cli(db_dsn, "wait", str(cancelled))
    assert (waited.returncode, waited.stdout.strip()) == (
        5,
        f"event {cancelled}: cancelled (not needed)",
    )

    pending = await enqueue(conn, "flow.quick", later=True)
    timed_out = cli(db_dsn, "wait", str(pending), "--timeout", "0.3")
    assert timed_out.returncode == 124
    assert f"event {pending} is still pending after 0.3s" in timed_out.stderr
    missing = cli(db_dsn, "wait", "999999")
    assert missing.returncode == 1 and "no event 999999" in missing.stderr
    assert "Exit codes: 0 done, 3 dead" in run_cli("wait", "--help").stdout


async def test_wait_api_polls_outside_a_transaction(fconn: asyncpg.Connection) -> None:
    conn = fconn
    event = await enqueue(conn, "flow.quick", later=True)
    with pytest.raises(pgqueue.errors.WaitTimeout) as caught:
        await pgqueue.wait(conn, event, timeout=0.1)
    assert isinstance(caught.value, TimeoutError) and caught.value.state == "pending"
    async with conn.transaction():
        with pytest.raises(pgqueue.errors.ConfigurationError, match="outside a transaction"):
            await pgqueue.wait(conn, event, timeout=1)
    with pytest.raises(pgqueue.errors.EventNotFound):
        await pgqueue.wait(conn, event + 1000)
    await pgqueue.admin.cancel(conn, ids=[event], reason="test")
    result = await pgqueue.wait(conn, event, timeout=5)
    assert (result.state, result.last_error) == (pgqueue.EventState.CANCELLED, "test")


async def test_pause_stops_claiming_running_events_finish_and_resume_restarts(
    fconn: asyncpg.Connection, db_dsn: str, workers: Workers
) -> None:
    conn = fconn
    running = await enqueue(conn, "flow.block")
    worker = workers.start(db_dsn, queue=["default", "other"])
    await worker.wait_started()
    await wait_for(
        equals(conn, 1, "SELECT count(*) FROM flow_runs WHERE handler = 'blocker'"),
        timeout=20,
        message="blocker never started",
    )

    paused = cli(db_dsn, "pause", "default", "--reason", "deploy")
    assert (paused.returncode, paused.stdout.strip()) == (0, "queue default paused")
    assert not await pgqueue.admin.pause_queue(conn, "default")  # already paused
    # The worker reads pauses once per poll interval (0.2 s here) and says so when it does.
    await wait_for(
        lambda: _said(worker.stderr(), "queue default is paused"),
        timeout=20,
        message="the worker never saw the pause",
    )
    held = await enqueue(conn, "flow.quick")
    other = await enqueue(conn, "flow.quick", queue="other")
    # The claim that took `other` (committed after `held`) would have taken `held` too.
    assert (await pgqueue.wait(conn, other, timeout=30)).state == "done"
    assert await conn.fetchval(STATE, held) == "pending"
    # The event that was running when the queue paused finishes.
    await conn.execute("UPDATE flow_gate SET open = true")
    assert (await pgqueue.wait(conn, running, timeout=30)).state == "done"

    status = cli(db_dsn, "status")
    assert "paused queue" in status.stdout and "deploy" in status.stdout
    assert [p.queue for p in await pgqueue.admin.list_paused(conn)] == ["default"]

    resumed = cli(db_dsn, "resume", "default")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "queue default resumed")
    assert (await pgqueue.wait(conn, held, timeout=30)).state == "done"
    assert not await pgqueue.admin.resume_queue(conn, "default")  # not paused any more
    assert (await pgqueue.admin.status(conn)).paused == []


async def _said(text: str, line: str) -> bool:
    return line in text

async def test_cancel_by_ordering_key_through_the_cli_and_the_api(
    fconn: asyncpg.Connection, db_dsn: str
) -> None:
    conn = fconn
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    keyed = {
        key: [
            await pgqueue.enqueue(conn, "flow.quick", {}, ordering_key=key, run_at=later)
            for _ in range(2)
        ]
        for key in ("k1", "k2", "k3")
    }
    plain = await enqueue(conn, "flow.quick", later=True)

    preview = cli(db_dsn, "cancel", "--ordering-key", "k1", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "2 event(s) to cancel (2 pending, 0 running)" in preview.stdout
    result = cli(db_dsn, "cancel", "--ordering-key", "k1", "--queue", "default", "--yes")
    assert result.returncode == 0, result.stderr
    assert "2 event(s) cancelled" in result.stdout

    count = await pgqueue.admin.count_cancellable(conn, ordering_key="k2")
    assert (count.pending, count.running) == (2, 0)
    cancelled = await pgqueue.admin.cancel(
        conn, reason="key retired", ordering_key="k2", event_type="flow.quick"
    )
    assert cancelled == keyed["k2"]
    rows = await conn.fetch("SELECT id, state FROM pgqueue.outbox ORDER BY id")
    assert {r["id"]: r["state"] for r in rows} == {
        **dict.fromkeys(keyed["k1"] + keyed["k2"], "cancelled"),
        **dict.fromkeys(keyed["k3"] + [plain], "pending"),
    }
    with pytest.raises(pgqueue.errors.ConfigurationError, match="ordering key must be 1-200"):
        await pgqueue.admin.cancel(conn, reason="x", ordering_key="")
    bad = cli(db_dsn, "cancel", "--ordering-key", "x" * 201, "--yes")
    assert bad.returncode == 1 and "ordering key must be 1-200 characters" in bad.stderr
    assert "Traceback" not in bad.stderr
