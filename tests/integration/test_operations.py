"""Operations: prune, several worker processes, and the query plans the speed depends on."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

import pgqueue
import pgqueue.admin
from pgqueue._db import pool_options
from pgqueue._queries import queries_for
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


async def _seed(conn: asyncpg.Connection, state: str, n: int, age: str) -> None:
    """Insert ``n`` rows in ``state``, processed/created ``age`` ago, in one statement."""
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, created_at, processed_at) "
        "SELECT 'old.event', $1::text, now() - $2::text::interval, "
        "CASE WHEN $1::text = 'done' THEN now() - $2::text::interval END "
        "FROM generate_series(1, $3)",
        state,
        age,
        n,
    )


async def test_prune_deletes_old_done_events_in_batches(conn: asyncpg.Connection) -> None:
    await _seed(conn, "done", 25, "10 days")
    await _seed(conn, "done", 3, "1 hour")
    await _seed(conn, "dead", 4, "10 days")
    pending = await pgqueue.enqueue(conn, "new.event", {})
    await conn.execute(
        "INSERT INTO pgqueue.effects (event_id, handler) "
        "SELECT id, 'h' FROM pgqueue.outbox WHERE state = 'done'"
    )
    seen: list[int] = []
    deleted = await pgqueue.admin.prune(
        conn, dt.timedelta(days=7), batch_size=10, progress=seen.append
    )
    assert deleted == 25
    assert seen == [10, 20, 25]
    counts = dict(await conn.fetch("SELECT state, count(*) FROM pgqueue.outbox GROUP BY state"))
    assert counts == {"done": 3, "dead": 4, "pending": 1}
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.effects") == 3  # ledger follows
    assert await pgqueue.admin.prune(conn, dt.timedelta(days=7), include_dead=True) == 4
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE id = $1", pending) == 1


async def test_prune_cli_previews_confirms_and_deletes(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await _seed(conn, "done", 12, "2 days")
    dry = run_cli("prune", "--older-than", "1d", "--dry-run", "--dsn", db_dsn)
    assert dry.returncode == 0 and "12 done event(s)" in dry.stdout, dry.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 12
    unconfirmed = run_cli("prune", "--older-than", "1d", "--dsn", db_dsn)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 12
    done = run_cli("prune", "--older-than", "1d", "--yes", "--batch-size", "5", "--dsn", db_dsn)
    assert done.returncode == 0 and "deleted 12 event(s)" in done.stdout, done.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


async def test_worker_processes_share_the_work(db_dsn: str, conn: asyncpg.Connection) -> None:
    """--processes 2: two OS processes drain one queue; every event runs exactly once."""
    await conn.execute("CREATE TABLE runs (event_id bigint, pid int)")
    await pgqueue.enqueue_many(
        conn, [pgqueue.Event(event_type="sample.pid", payload={}) for _ in range(3000)]
    )
    result = run_cli(
        "worker",
        "--handlers",
        "tests.integration.sample_handlers:registry",
        "--processes",
        "2",
        "--burst",
        "--batch-size",
        "50",
        "--dsn",
        db_dsn,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("burst done") == 2
    per_event = await conn.fetchval(
        "SELECT count(*) FROM (SELECT event_id FROM runs GROUP BY event_id HAVING count(*) = 1) x"
    )
    assert per_event == 3000
    assert await conn.fetchval("SELECT count(DISTINCT pid) FROM runs") >= 1
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state <> 'done'") == 0


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


async def _explain(conn: asyncpg.Connection, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with conn.transaction():
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        await conn.execute("SELECT 1")
    return _plan_nodes(json.loads(raw)[0]["Plan"])


def _bare(condition: str) -> str:
    """An index condition without the casts from the columns' domains (sql/0011) to their
    base types: ``(run_at)::timestamp with time zone <= now()`` reads ``run_at <= now()``."""
    return condition.replace("(run_at)::timestamp with time zone", "run_at").replace(
        "(priority)::smallint", "priority"
    )


async def test_claim_and_completion_use_their_indexes(conn: asyncpg.Connection) -> None:
    """On a table of 200,000 done rows, 2,000 ready ones of three priorities and 20,000 due
    tomorrow, no statement of the hot path scans the table: the claim walks outbox_ready_idx
    per priority with run_at <= now() as a bound of the range (so future rows are never read);
    completion and heartbeat use the key. (With few ready rows per priority the planner may
    take them by bitmap and sort them: fine; with many it walks the index in order.)"""
    await _seed(conn, "done", 200_000, "1 day")
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    await pgqueue.enqueue_many(
        conn,
        [pgqueue.Event(event_type="t", payload={}, priority=i % 3) for i in range(2000)]
        + [
            pgqueue.Event(event_type="t", payload={}, priority=9, run_at=tomorrow)
            for _ in range(20_000)
        ],
    )
    await conn.execute("ANALYZE pgqueue.outbox")
    q = queries_for("pgqueue")
    token = uuid.uuid4()
    # Unbounded (the periodic full read) and bounded below by a floor (see
    # pgqueue/_worker/floor.py), planned for the parameters and as the claim connection's one
    # generic plan.
    for floor, mode in itertools.product((-math.inf, time.time() - 60), ("custom", "generic")):
        await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
        claim = await _explain(conn, q.core.CLAIM, "default", ["t"], 500, token, "w", 30.0, floor)
        picks = [n for n in claim if n.get("Index Name") == "outbox_ready_idx" and
                 "run_at <= now()" in _bare(n.get("Index Cond", ""))]  # fmt: skip
        assert picks and "priority = " in _bare(picks[0]["Index Cond"]), claim
        assert "run_at >= " in _bare(picks[0]["Index Cond"]), claim
        assert not [n for n in claim if n["Node Type"] == "Seq Scan"], claim
    await conn.execute("RESET plan_cache_mode")
    for statement, args in [
        (q.core.COMPLETE_DONE, ([1, 2], token)),
        (q.core.HEARTBEAT, ([1, 2], [token, token], 30.0)),
        (q.core.RESCUE, (1000, [token])),
        (q.core.NEXT_DUE, ("default", ["t"])),
    ]:
        nodes = await _explain(conn, statement, *args)
        scans = [
            n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "outbox"
        ]
        assert not scans, (statement, nodes)


async def test_claim_generic_plan_made_on_an_empty_outbox_still_uses_the_index(
    db_dsn: str,
) -> None:
    """The claim keeps one generic plan per connection (pgqueue/_db.py). One made while the
    outbox was empty must not read the table sequentially once it has grown."""
    settings = pool_options(pooled=False, control=True, generic=True)["server_settings"]
    conn = await asyncpg.connect(db_dsn, server_settings=settings)
    try:
        q = queries_for("pgqueue")
        await conn.execute(f"PREPARE claim AS {q.core.CLAIM}")
        args = "('default', '{t}', 500, gen_random_uuid(), 'w', 30.0, '-Infinity')"
        await conn.execute(f"EXECUTE claim {args}")  # planned now, on an empty table
        await _seed(conn, "done", 50_000, "1 day")
        await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('t')")
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE claim {args}")
        nodes = _plan_nodes(json.loads(raw)[0]["Plan"])
        assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Bitmap Heap Scan")], nodes
        assert any(n.get("Index Name") == "outbox_ready_idx" for n in nodes), nodes
    finally:
        await conn.close()


async def test_completion_and_heartbeat_find_rows_by_key_not_by_the_lease_index(
    conn: asyncpg.Connection,
) -> None:
    """Outcomes and lease renewals go through the primary key, never outbox_lease_idx.

    That partial index (WHERE state = 'running') keeps the entry of every row that was ever
    running until VACUUM, and a bitmap scan of it never learns they are dead. The planner,
    told by ANALYZE that few rows run, preferred it over 500 key lookups: a completion then
    read every entry since the last VACUUM (120,000 entries, 17-31 ms, 20 s into 10k ev/s)."""
    await _seed(conn, "done", 200_000, "1 day")
    token = uuid.uuid4()
    ids = await conn.fetch(
        "INSERT INTO pgqueue.outbox (event_type, state, attempt, lease_token, lease_expires_at) "
        "SELECT 't', 'running', 1, $1, now() + interval '30 seconds' "
        "FROM generate_series(1, 1000) RETURNING id",
        token,
    )
    await conn.execute("ANALYZE pgqueue.outbox")
    batch = [r["id"] for r in ids[:500]]
    q = queries_for("pgqueue")
    n = len(batch)
    outcomes = ([token] * n, ["done"] * n, [0.0] * n, [0] * n, [None] * n, [None] * n)
    for statement, args in [
        (q.core.COMPLETE_DONE, (batch, token)),
        (q.core.COMPLETE, (batch, *outcomes)),
        (q.core.HEARTBEAT, (batch, [token] * n, 30.0)),
    ]:
        nodes = await _explain(conn, statement, *args)
        indexes = {n.get("Index Name") for n in nodes} - {None}
        assert "outbox_lease_idx" not in indexes, (statement, nodes)
        assert "outbox_pkey" in indexes, (statement, nodes)


async def test_rescue_walks_the_lease_index_and_marks_finished_rows_dead(
    conn: asyncpg.Connection,
) -> None:
    """The rescue reads outbox_lease_idx with a plain index scan (RESCUE_PLAN), which marks
    the entries of finished rows dead as it passes; a bitmap scan re-read all of them on every
    rescue until VACUUM. Seeded: 50,000 rows that were running and are done (their entries
    stay) and 20 running rows whose lease expired."""
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, attempt, lease_token, lease_expires_at) "
        "SELECT 't', 'running', 1, gen_random_uuid(), now() - interval '1 hour' "
        "FROM generate_series(1, 50020)"
    )
    await conn.execute(
        "UPDATE pgqueue.outbox SET state = 'done', processed_at = now(), lease_token = NULL, "
        "leased_by = NULL, lease_expires_at = NULL WHERE id > 20"
    )
    # No ANALYZE: as on a server whose autovacuum has not run since, the planner guesses from
    # the table's size (and picked the bitmap scan before RESCUE_PLAN).
    q = queries_for("pgqueue")
    async with conn.transaction():
        await conn.execute(q.core.RESCUE_PLAN)
        nodes = await _explain(conn, q.core.RESCUE, 1000, [uuid.uuid4()])
    scans = {(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]}
    assert ("Index Scan", "outbox_lease_idx") in scans, nodes
    assert not [s for s in scans if s[0].startswith("Bitmap")], nodes
    rescued = await q.core.rescue(conn, [])
    assert sorted(r["id"] for r in rescued) == list(range(1, 21))
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state = 'pending'") == 20
