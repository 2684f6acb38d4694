"""Inspecting events: `pgqueue events list|show`, `pgqueue status --watch`, and the API behind.

Events are seeded through the public API and a real worker run (a handler that always fails
leaves its event dead with per-handler records; a handler that succeeds at once leaves none).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from tenacity import stop_after_attempt, wait_fixed

import pgqueue
import pgqueue.admin
from pgqueue._migrate import roles_sql
from pgqueue._queries import queries_for
from tests.integration.core_support import QUICK, Calls, counting, run_burst
from tests.integration.test_core_cli import ROOT, assert_one_line_error, cli

SECRET = "pii-jane.doe@example.com"  # in every payload; a listing must never show it
HEADER = ["event", "type", "pending"]
CLI = [sys.executable, "-c", "from pgqueue._cli.main import main; main()"]


@dataclass(frozen=True)
class Seeded:
    """The ids of the seeded events, by what they are."""

    dead1: int  # order.placed, key order-1: crm dead after 3 attempts, email done
    dead2: int  # order.placed: the same
    done: int  # user.signup: welcome succeeded at once, so no per-handler record
    delayed: int  # user.signup on queue bulk, due in an hour
    old: int  # report.monthly (no handler), created 3 days ago
    running: int  # order.placed, claimed by "w-test"

    @property
    def all(self) -> set[int]:
        return {self.dead1, self.dead2, self.done, self.delayed, self.old, self.running}


async def _fail(ctx: pgqueue.Context) -> None:
    raise ConnectionError("CRM API timed out")


async def seed(db_dsn: str, conn: asyncpg.Connection) -> Seeded:
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "order.placed", "crm", behaviour=_fail, retry=QUICK)
    counting(registry, calls, "order.placed", "email")
    counting(registry, calls, "user.signup", "welcome")
    dead1 = await pgqueue.enqueue(
        conn, "order.placed", {"order_id": 1, "email": SECRET}, idempotency_key="order-1"
    )
    dead2 = await pgqueue.enqueue(conn, "order.placed", {"order_id": 2, "email": SECRET})
    done = await pgqueue.enqueue(conn, "user.signup", {"email": SECRET})
    stats = await run_burst(db_dsn, registry)
    assert (stats.dead, stats.done) == (2, 1), stats
    delayed = await pgqueue.enqueue(
        conn,
        "user.signup",
        {"email": SECRET},
        queue="bulk",
        run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    old = await pgqueue.enqueue(conn, "report.monthly", {"email": SECRET})
    await conn.execute(
        "UPDATE pgqueue.outbox SET created_at = now() - interval '3 days' WHERE id = $1", old
    )
    running = await pgqueue.enqueue(conn, "order.placed", {"order_id": 3, "email": SECRET})
    await conn.execute(
        "UPDATE pgqueue.outbox SET state = 'running', attempt = 1, leased_by = 'w-test', "
        "lease_token = gen_random_uuid(), lease_expires_at = now() + interval '30 s' "
        "WHERE id = $1",
        running,
    )
    return Seeded(dead1, dead2, done, delayed, old, running)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def listed_ids(db_dsn: str, *args: str) -> list[int]:
    return [
        e["id"] for e in json_lines(await cli("events", "list", "--json", *args, "--dsn", db_dsn))
    ]


# -- events list ------------------------------------------------------------------------------


async def test_list_is_a_table_newest_first_without_payloads(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)

    result = await cli("events", "list", "--dsn", db_dsn)

    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == [
        "id", "type", "queue", "state", "attempt", "created", "run_at", "last", "error"
    ]  # fmt: skip
    assert [int(line.split()[0]) for line in lines] == sorted(s.all, reverse=True)
    rows = {int(line.split()[0]): line.split() for line in lines}
    assert rows[s.dead1][1:5] == ["order.placed", "default", "dead", "1"]  # one claim
    assert "crm: ConnectionError: CRM API timed out" in " ".join(rows[s.dead1])
    # created "N ago", run_at "in N" for the delayed event
    assert rows[s.delayed][2:5] == ["bulk", "pending", "0"] and rows[s.delayed][7] == "in"
    assert rows[s.old][5:7] == ["3.0d", "ago"]
    assert SECRET not in result.stdout + result.stderr
    assert "more:" not in result.stderr  # everything fitted on one page


async def test_list_json_is_one_object_per_line_without_the_payload(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)

    result = await cli("events", "list", "--json", "--dsn", db_dsn)

    events = json_lines(result)
    assert SECRET not in result.stdout
    assert [e["id"] for e in events] == sorted(s.all, reverse=True)
    by_id = {e["id"]: e for e in events}
    assert "payload" not in by_id[s.dead1]
    assert by_id[s.dead1]["handlers"] == {"crm": "dead", "email": "done"}
    assert by_id[s.dead1]["idempotency_key"] == "order-1"
    assert by_id[s.done]["handlers"] is None  # the happy path keeps no record
    assert by_id[s.running]["leased_by"] == "w-test"
    row = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", s.dead1)
    assert dt.datetime.fromisoformat(by_id[s.dead1]["created_at"]) == row["created_at"]
    assert by_id[s.dead1]["last_error"] == row["last_error"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--type", "order.placed"), "dead1 dead2 running"),
        (("--type", "order.placed", "--type", "report.monthly"), "dead1 dead2 running old"),
        (("--state", "dead"), "dead1 dead2"),
        (("--state", "pending", "--state", "running"), "delayed old running"),
        (("--state", "done"), "done"),
        (("--handler", "crm"), "dead1 dead2"),
        (("--handler", "crm", "--handler-state", "dead"), "dead1 dead2"),
        (("--handler", "email", "--handler-state", "done"), "dead1 dead2"),
        (("--handler", "email", "--handler-state", "dead"), ""),
        (("--handler-state", "dead"), "dead1 dead2"),
        (("--handler", "welcome"), ""),  # succeeded at once: no record to match
        (("--since", "1d"), "dead1 dead2 done delayed running"),
        (("--until", "2d"), "old"),
        (("--since", "4d", "--until", "1h"), "old"),
        (("--key", "order-1"), "dead1"),
        (("--queue", "bulk"), "delayed"),
        (("--type", "order.placed", "--state", "dead", "--since", "1h"), "dead1 dead2"),
    ],
)  # fmt: skip
async def test_each_filter_selects_exactly_its_events(
    db_dsn: str, conn: asyncpg.Connection, args: tuple[str, ...], expected: str
) -> None:
    s = await seed(db_dsn, conn)
    want = sorted((getattr(s, name) for name in expected.split()), reverse=True)

    assert await listed_ids(db_dsn, *args) == want


async def test_since_and_until_accept_iso_times(db_dsn: str, conn: asyncpg.Connection) -> None:
    s = await seed(db_dsn, conn)
    two_days_ago = await conn.fetchval("SELECT now() - interval '2 days'")
    iso = two_days_ago.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

    assert set(await listed_ids(db_dsn, "--since", iso)) == s.all - {s.old}
    assert await listed_ids(db_dsn, "--until", iso) == [s.old]


async def test_limit_and_before_id_walk_every_event_once(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)
    seen: list[int] = []
    before: list[str] = []
    for _ in range(10):
        page = await listed_ids(db_dsn, "--limit", "4", *before)
        if not page:
            break
        seen += page
        before = ["--before-id", str(page[-1])]
    assert seen == sorted(s.all, reverse=True)

    first = await cli("events", "list", "--limit", "4", "--dsn", db_dsn)
    assert first.returncode == 0, first.stderr
    assert f"more: add --before-id {seen[3]} for the next page" in first.stderr
    last = await cli("events", "list", "--limit", "4", "--before-id", str(seen[3]), "--dsn", db_dsn)
    assert len(last.stdout.splitlines()) == 1 + 2 and "more:" not in last.stderr


async def test_an_empty_result_says_so(db_dsn: str) -> None:
    result = await cli("events", "list", "--state", "dead", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no events match"
    assert json_lines(await cli("events", "list", "--json", "--dsn", db_dsn)) == []


# -- events show ------------------------------------------------------------------------------


async def test_show_prints_payload_handler_records_key_and_effects(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)
    await conn.execute(
        "INSERT INTO pgqueue.effects (event_id, handler) VALUES ($1, 'email')", s.dead1
    )

    result = await cli("events", "show", str(s.dead1), "--dsn", db_dsn)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert SECRET in out and '"order_id": 1' in out  # show is where the payload is
    fields = dict(
        line.split("  ", 1) for line in out.splitlines() if line[:1].isalpha() and "  " in line
    )
    assert fields["state"].strip() == "dead, attempt 1"  # one claim, 3 tries in process
    assert fields["idempotency key"].strip() == "order-1"
    assert fields["effects recorded"].strip() == "email"
    assert fields["lease"].strip() == "-"
    handler_rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:2] == "  "}
    assert handler_rows["crm"][1:3] == ["dead", "3"]
    assert "ConnectionError: CRM API timed out" in " ".join(handler_rows["crm"])
    assert handler_rows["email"][1:3] == ["done", "1"]


async def test_show_json_matches_the_row(db_dsn: str, conn: asyncpg.Connection) -> None:
    s = await seed(db_dsn, conn)

    result = await cli("events", "show", str(s.running), "--json", "--dsn", db_dsn)

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    row = await conn.fetchrow("SELECT * FROM pgqueue.outbox WHERE id = $1", s.running)
    assert shown["payload"] == json.loads(row["payload"])
    assert (shown["state"], shown["leased_by"], shown["lease_token"]) == (
        "running",
        "w-test",
        str(row["lease_token"]),
    )
    assert dt.datetime.fromisoformat(shown["lease_expires_at"]) == row["lease_expires_at"]
    assert shown["handler_records"] == [] and shown["handlers"] is None


async def test_show_of_a_happy_path_event_explains_the_missing_records(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)
    result = await cli("events", "show", str(s.done), "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert "every handler succeeded at its first attempt" in result.stdout
    processed = next(line for line in result.stdout.splitlines() if line.startswith("processed"))
    assert processed.split()[1].startswith("20")  # an ISO time, not "-"


async def test_show_of_a_missing_event_is_one_error_line(db_dsn: str) -> None:
    result = await cli("events", "show", "424242", "--dsn", db_dsn)
    assert_one_line_error(result, 1, "no event 424242", "pgqueue events list")


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (("events", "show", "abc"), 2, "'abc' is not a valid integer"),
        (("events", "show", "0"), 2, "ID"),
        (("events", "show", "99999999999999999999"), 2, "ID"),
        (("events", "list", "--state", "stuck"), 2, "--state"),
        (("events", "list", "--handler-state", "running"), 2, "--handler-state"),
        (("events", "list", "--since", "yesterday"), 2, "neither a duration"),
        (("events", "list", "--until", "2026-01-01T00:00"), 2, "no time zone"),
        (("events", "list", "--limit", "0"), 2, "--limit"),
        (("events", "list", "--before-id", "-5"), 2, "--before-id"),
        (("events", "list", "--queue", "no spaces"), 1, "invalid queue name"),
        (("status", "--interval", "1"), 2, "--interval only applies with --watch"),
        (("status", "--watch", "--interval", "0"), 2, "--interval"),
        (("status", "--watch", "--exact"), 2, "--exact does not apply with --watch"),
    ],
)  # fmt: skip
async def test_bad_input_is_one_error_line(
    db_dsn: str, args: tuple[str, ...], code: int, fragment: str
) -> None:
    result = await cli(*args, "--dsn", db_dsn)
    assert_one_line_error(result, code, fragment)


async def test_a_durable_retry_shows_as_a_pending_handler_with_its_due_time(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry, calls = pgqueue.Registry(), Calls()
    later = pgqueue.RetryPolicy(stop=stop_after_attempt(5), wait=wait_fixed(600))
    counting(registry, calls, "order.placed", "crm", behaviour=_fail, retry=later)
    counting(registry, calls, "order.placed", "email")
    event_id = await pgqueue.enqueue(conn, "order.placed", {"email": SECRET})
    await run_burst(db_dsn, registry)  # crm fails once and is due again in 10 minutes

    assert await listed_ids(db_dsn, "--handler", "crm", "--handler-state", "pending") == [event_id]
    assert await listed_ids(db_dsn, "--handler-state", "done") == [event_id]  # email
    shown = await cli("events", "show", str(event_id), "--dsn", db_dsn)
    assert shown.returncode == 0, shown.stderr
    crm = next(line.split() for line in shown.stdout.splitlines() if line.startswith("  crm"))
    assert crm[1:4] == ["pending", "1", "in"] and 5 < float(crm[4].rstrip("m")) <= 10, crm
    detail = json.loads(
        (await cli("events", "show", str(event_id), "--json", "--dsn", db_dsn)).stdout
    )
    run_at = await conn.fetchval("SELECT run_at FROM pgqueue.outbox WHERE id = $1", event_id)
    crm_record = next(h for h in detail["handler_records"] if h["name"] == "crm")
    assert abs(dt.datetime.fromisoformat(crm_record["not_before"]) - run_at) < dt.timedelta(
        seconds=1
    )


async def test_help_of_the_events_commands(db_dsn: str) -> None:
    for command, fragment in [("list", "JSON Lines"), ("show", "payload")]:
        result = await cli("events", command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"pgqueue events {command}" in result.stdout and fragment in result.stdout
        assert "PGQUEUE_DSN" in result.stdout
    status = await cli("status", "--help")
    assert all(option in status.stdout for option in ("--watch", "--interval", "--exact"))


async def test_an_ops_role_may_inspect_and_a_producer_gets_one_error_line(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)
    await conn.execute(roles_sql("pgqueue"))
    for role, group in [
        ("pgqueue_test_ops", "pgqueue_ops"),
        ("pgqueue_test_producer", "pgqueue_producer"),
    ]:
        await conn.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN; END IF; END $$"
        )
        await conn.execute(f"GRANT {group} TO {role}")
    host = db_dsn.split("@", 1)[1] if "@" in db_dsn else db_dsn.split("://", 1)[1]

    ops = await cli("events", "list", "--json", "--dsn", f"postgresql://pgqueue_test_ops@{host}")
    assert sorted(e["id"] for e in json_lines(ops)) == sorted(s.all)
    shown = await cli(
        "events", "show", str(s.dead1), "--dsn", f"postgresql://pgqueue_test_ops@{host}"
    )
    assert shown.returncode == 0 and SECRET in shown.stdout, shown.stderr
    producer = await cli("events", "list", "--dsn", f"postgresql://pgqueue_test_producer@{host}")
    assert_one_line_error(producer, 1, "permission denied", "pgqueue roles")


# -- the Python API ---------------------------------------------------------------------------


async def test_api_returns_typed_models(db_dsn: str, conn: asyncpg.Connection) -> None:
    s = await seed(db_dsn, conn)

    page = await pgqueue.admin.list_events(
        conn, states=[pgqueue.EventState.DEAD], since=dt.timedelta(hours=1), limit=1
    )
    assert [e.id for e in page.events] == [s.dead2]
    assert page.next_before_id == s.dead2
    rest = await pgqueue.admin.list_events(conn, states=["dead"], before_id=page.next_before_id)
    assert [e.id for e in rest.events] == [s.dead1] and rest.next_before_id is None
    assert rest.events[0].handlers == {
        "crm": pgqueue.HandlerState.DEAD,
        "email": pgqueue.HandlerState.DONE,
    }

    detail = await pgqueue.admin.get_event(conn, s.dead1)
    assert detail is not None and detail.payload == {"order_id": 1, "email": SECRET}
    crm = next(h for h in detail.handler_records if h.name == "crm")
    assert (crm.state, crm.attempts) == (pgqueue.HandlerState.DEAD, 3)
    assert crm.updated_at is not None and abs(crm.updated_at - detail.db_now) < dt.timedelta(
        minutes=1
    )
    assert await pgqueue.admin.get_event(conn, 10**12) is None
    with pytest.raises(ValueError, match="time zone"):
        await pgqueue.admin.list_events(conn, since=dt.datetime(2026, 1, 1))


async def test_live_status_counts_active_states_and_recent_throughput(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    s = await seed(db_dsn, conn)
    await conn.execute(
        "UPDATE pgqueue.outbox SET processed_at = now() - interval '1 hour' WHERE id = $1", s.done
    )
    await pgqueue.enqueue(conn, "user.signup", {})
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, processed_at) "
        "SELECT 'user.signup', 'done', now() - interval '10 s' FROM generate_series(1, 30)"
    )

    live = await pgqueue.admin.live_status(conn, window=60)

    by_type = {t.event_type: t for t in live.types}
    assert by_type["order.placed"].model_dump(exclude={"oldest_ready_age"}) == {
        "event_type": "order.placed", "pending": 0, "running": 1, "dead": 2, "discarded": 0,
        "cancelled": 0, "done_recently": 0
    }  # fmt: skip
    assert live.paused == []
    # the done event processed an hour ago is outside the window
    assert (by_type["user.signup"].pending, by_type["user.signup"].done_recently) == (2, 30)
    assert live.throughput == pytest.approx(30 / 60)
    assert by_type["report.monthly"].oldest_ready_age is not None
    assert live.oldest_ready_age == by_type["report.monthly"].oldest_ready_age
    assert by_type["user.signup"].oldest_ready_age is not None  # the delayed one is not due
    assert by_type["user.signup"].oldest_ready_age < by_type["report.monthly"].oldest_ready_age
    assert {(h.handler, h.state.value, h.events) for h in live.handlers} == {
        ("crm", "dead", 2),
        ("email", "done", 2),
    }


# -- status: exact where cheap, sampled done counts on a big outbox ---------------------------


async def _seed_done(conn: asyncpg.Connection, n: int) -> None:
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, processed_at) "
        "SELECT 'bulk.done', 'done', now() FROM generate_series(1, $1)",
        n,
    )
    await pgqueue.enqueue(conn, "bulk.done", {})
    await conn.execute("ANALYZE pgqueue.outbox")


async def test_status_estimates_done_counts_above_the_exact_limit(
    conn: asyncpg.Connection,
) -> None:
    await _seed_done(conn, 5000)

    exact = await pgqueue.admin.status(conn)
    sampled = await pgqueue.admin.status(conn, exact_limit=1000)

    assert [(r.state, r.events, r.estimated) for r in exact.counts] == [
        ("done", 5000, False),
        ("pending", 1, False),
    ]
    # 5,000 rows is below the sample size, so the "sample" reads every page: same counts.
    assert [(r.state, r.events, r.estimated) for r in sampled.counts] == [
        ("done", 5000, True),
        ("pending", 1, False),
    ]


async def test_status_cli_marks_estimates_and_exact_counts_all(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await _seed_done(conn, 50_000)
    # Make the planner's row count say 1.5 million (after ANALYZE, so nothing resets it).
    await conn.execute(
        "UPDATE pg_class SET reltuples = 1500000 WHERE oid = 'pgqueue.outbox'::regclass"
    )

    sampled = await cli("status", "--dsn", db_dsn)
    exact = await cli("status", "--exact", "--dsn", db_dsn)

    assert sampled.returncode == exact.returncode == 0, sampled.stderr + exact.stderr
    done = sampled.stdout.splitlines()[1].split()[3]  # event type, pending, running, done
    assert done.startswith("~") and 20_000 < int(done[1:]) < 125_000, sampled.stdout
    assert "~ done counts estimated from a sample" in sampled.stdout
    assert exact.stdout.splitlines()[1].split()[:5] == ["bulk.done", "1", "0", "50000", "0"]
    assert "~" not in exact.stdout


# -- status --watch ---------------------------------------------------------------------------


async def _read_blocks(stream: asyncio.StreamReader, blocks: int) -> str:
    """Read stdout until ``blocks`` complete blocks (each ends with an empty line)."""
    text = ""
    while text.count("pgqueue status at") < blocks or not text.endswith("\n\n"):
        line = await stream.readline()
        assert line, f"status --watch ended early:\n{text}"
        text += line.decode()
    return text


async def test_status_watch_prints_a_block_per_interval_and_exits_zero_on_sigint(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    seeded = await seed(db_dsn, conn)
    assert await pgqueue.admin.cancel(conn, reason="not needed", ids=[seeded.delayed])
    await pgqueue.admin.pause_queue(conn, "bulk", who="alice", reason="maintenance")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "status", "--watch", "--interval", "0.2", "--dsn", db_dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(_read_blocks(proc.stdout, 2), timeout=30)
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert proc.returncode == 0, err.decode()
    assert err.decode() == ""
    output = first + rest.decode()
    assert "\x1b[" not in output  # not a terminal: blocks are appended, never redrawn
    blocks = [b for b in output.split("pgqueue status at")[1:]]
    assert len(blocks) >= 2
    for block in blocks:
        lines = block.splitlines()
        start = next(i for i, line in enumerate(lines) if line.split()[:3] == HEADER)
        end = lines.index("", start)
        rows = {line.split()[0]: line.split() for line in lines[start + 1 : end]}
        assert rows["order.placed"][1:5] == ["0", "1", "2", "0"]  # pending, running, dead,
        assert rows["report.monthly"][1:5] == ["1", "0", "0", "0"]  # cancelled
        assert rows["user.signup"][1:5] == ["0", "0", "0", "1"]
        assert "throughput: 0.0 events/s done over the last 0.2s" in block
        paused = next(line.split() for line in lines if line.startswith("bulk "))
        assert paused[2:] == ["alice", "maintenance"]
        assert "workers do not claim from paused queues" in block
        assert ["order.placed", "crm", "0", "0", "2"] in [
            line.split() for line in block.splitlines()
        ]


async def test_status_watch_redraws_in_place_on_a_terminal(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await seed(db_dsn, conn)
    master, slave = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "status", "--watch", "--interval", "0.2", "--dsn", db_dsn,
        stdout=slave, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    os.close(slave)
    try:
        screen = b""

        async def two_redraws() -> None:
            nonlocal screen
            while screen.count(b"\x1b[H\x1b[2J") < 2:
                screen += await asyncio.to_thread(os.read, master, 4096)

        await asyncio.wait_for(two_redraws(), timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert proc.returncode == 0, err.decode()
    assert b"order.placed" in screen.split(b"\x1b[H\x1b[2J")[1]


async def test_status_watch_losing_its_connection_is_one_error_line(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "status", "--watch", "--interval", "0.2", "--dsn", db_dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(_read_blocks(proc.stdout, 1), timeout=30)
        terminated = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert terminated == 1
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result = subprocess.CompletedProcess([], proc.returncode, "", err.decode())
    assert_one_line_error(result, 1, "lost the connection", "run the command again")


# -- plans: the listing reads indexes, not the table --------------------------------------------


async def test_list_and_live_queries_use_indexes(conn: asyncpg.Connection) -> None:
    """300 dead events with records, then 30,000 newer done ones without: the handler filter
    walks outbox_handlers_idx, --state dead walks outbox_dead_list_idx newest first (not the
    primary key through every newer done row, and no sort), an unfiltered page the primary key
    (no sort), and no part of the live status scans the table."""
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, handlers) "
        """SELECT 't', 'dead', '{"crm": {"state": "dead", "attempts": 3}}'::jsonb """
        "FROM generate_series(1, 300)"
    )
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, processed_at) "
        "SELECT 't', 'done', now() - interval '1 day' FROM generate_series(1, 30000)"
    )
    await conn.execute("ANALYZE pgqueue.outbox")
    q = queries_for("pgqueue")
    nobody = [None] * 11

    def args(**set_: Any) -> list[Any]:
        names = ["types", "states", "handler", "hstate", "t1", "t2", "t3", "t4", "key", "queues"]
        values = [*nobody[:10], None, 51]
        for name, value in set_.items():
            values[names.index(name)] = value
        return values

    by_handler = await _plan(conn, q.steer.LIST_EVENTS, *args(handler="crm", hstate="dead"))
    assert any(n.get("Index Name") == "outbox_handlers_idx" for n in by_handler), by_handler
    dead = await _plan(conn, q.steer.LIST_EVENTS, *args(states=["dead"]))
    assert any(n.get("Index Name") == "outbox_dead_list_idx" for n in dead), dead
    assert not any(n["Node Type"] == "Sort" for n in dead), dead
    unfiltered = await _plan(conn, q.steer.LIST_EVENTS, *args())
    assert any(n.get("Index Name") == "outbox_pkey" for n in unfiltered), unfiltered
    assert not any(n["Node Type"] == "Sort" for n in unfiltered), unfiltered
    for statement, extra in [(q.steer.LIVE_COUNTS, (5.0,)), (q.steer.LIVE_HANDLERS, ())]:
        nodes = await _plan(conn, statement, *extra)
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def _plan(conn: asyncpg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    # A fresh statement text on this connection: a custom plan, as list_events gets.
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    return _nodes(json.loads(raw)[0]["Plan"])
