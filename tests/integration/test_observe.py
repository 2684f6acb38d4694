"""Observing workers: Prometheus metrics scraped over real HTTP, JSON logs, OpenTelemetry spans.

Workers run as real CLI processes (``--metrics-port``, ``--log-format json``) or in process;
the numbers scraped from ``/metrics`` are checked against the outbox rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import pgqueue
from pgqueue._queries import queries_for
from pgqueue._settings import DISTRIBUTION
from tests.helpers import run_cli, wait_for
from tests.integration.observe_handlers import registry as observe_registry

ROOT = Path(__file__).resolve().parents[2]
CLI = "from pgqueue._cli.main import main; main()"
HANDLERS = "tests.integration.observe_handlers:registry"
MARKER = "s3cr3t-marker-0b5e"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``postgres:<password>@`` as its user info (trust auth ignores it)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"postgres:{password}@{host}"))


def free_port(span: int = 1) -> int:
    """A port P such that P .. P+span-1 were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + span > 65_535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for p in range(port, port + span):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise AssertionError("no free port range found")


def scrape(port: int) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def parse(text: str) -> Samples:
    """The exposition text as {(sample name, labels): value}, by prometheus_client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; 0 when absent (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def labels_of(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


async def scrape_when(port: int, ready: Any, timeout: float = 30.0) -> Samples:
    """Scrape until ``ready(samples)`` holds (the outcome counters move after the row commits)."""
    latest: Samples = {}

    async def check() -> bool:
        nonlocal latest
        try:
            latest = await asyncio.to_thread(scrape, port)
        except OSError:
            return False  # not serving yet
        return bool(ready(latest))

    await wait_for(check, timeout=timeout, interval=0.1, message=f"metrics never matched: {latest}")
    return latest


class Proc:
    """A ``pgqueue worker`` child process writing stderr to a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", CLI, "worker", *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    async def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.popen.wait, 30)
        return code


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Worker processes of one test; any still running at the end is killed and reaped."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(timeout=30)


def start(procs: list[Proc], tmp_path: Path, dsn: str, *args: str) -> Proc:
    proc = Proc(
        ["--dsn", dsn, "--handlers", HANDLERS, "--poll-interval", "0.1", *args],
        tmp_path / f"worker-{len(procs)}.log",
    )
    procs.append(proc)
    return proc


async def backlog(conn: asyncpg.Connection) -> None:
    """3 delayed events and 2 events nobody handles, due for an hour already."""
    for _ in range(3):
        await conn.execute(
            "INSERT INTO pgqueue.outbox (event_type, run_at) VALUES ('later.event', now() + '1h')"
        )
    for _ in range(2):
        await conn.execute(
            "INSERT INTO pgqueue.outbox (event_type, run_at) "
            "VALUES ('nobody.listens', now() - interval '1 hour')"
        )


async def test_cli_worker_metrics_match_the_rows_and_logs_are_json(
    db_dsn: str, conn: asyncpg.Connection, procs: list[Proc], tmp_path: Path
) -> None:
    placed = [await pgqueue.enqueue(conn, "order.placed", {"card": MARKER}) for _ in range(5)]
    poison = await pgqueue.enqueue(conn, "order.poison", {"card": MARKER})
    await backlog(conn)
    port = free_port()
    secret_dsn = with_password(db_dsn, MARKER)
    proc = start(
        procs, tmp_path, secret_dsn, "--metrics-port", str(port), "--log-format", "json",
        "--log-level", "debug",
    )  # fmt: skip

    def settled(s: Samples) -> bool:
        return (
            value(s, "pgqueue_events_total", event_type="order.placed", outcome="done") == 5
            and value(s, "pgqueue_events_total", event_type="order.poison", outcome="dead") == 1
            # The database sample may be up to a second old: wait for it to see the end state.
            and value(s, "pgqueue_dead_events", event_type="order.poison") == 1
            and value(s, "pgqueue_queue_scheduled_events", queue="default") == 3
            # A sample taken while the retried events were due counts them as ready too.
            and value(s, "pgqueue_queue_ready_events", queue="default") == 2
        )

    s = await scrape_when(port, settled)
    # Event outcomes per claim: every order.placed went back once (bill failed), then done.
    done = await conn.fetchval(
        "SELECT count(*) FROM pgqueue.outbox WHERE event_type = 'order.placed' AND state = 'done'"
    )
    assert done == 5
    assert await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", poison) == "dead"
    assert value(s, "pgqueue_events_total", event_type="order.placed", outcome="retry") == 5
    bill_attempts = await conn.fetch(
        "SELECT attempts FROM pgqueue.handler_states WHERE handler = 'bill' AND state = 'done'"
    )
    assert [r["attempts"] for r in bill_attempts] == [2] * 5
    # Handler runs by outcome, and one duration observation per run that called the handler.
    runs = {
        (d["handler"], d["outcome"]): value(s, "pgqueue_handler_runs_total", **d)
        for d in labels_of(s, "pgqueue_handler_runs_total")
    }
    assert runs == {("ship", "done"): 5, ("bill", "retry"): 5, ("bill", "done"): 5,
                    ("explode", "dead"): 1}  # fmt: skip
    for handler, count in [("ship", 5), ("bill", 10)]:
        labels = {"event_type": "order.placed", "handler": handler}
        assert value(s, "pgqueue_handler_duration_seconds_count", **labels) == count
        assert value(s, "pgqueue_handler_duration_seconds_bucket", le="+Inf", **labels) == count
    # Lag: one observation per handler's first attempt.
    assert value(s, "pgqueue_lag_seconds_count", event_type="order.placed") == 10
    assert value(s, "pgqueue_lag_seconds_count", event_type="order.poison") == 1
    # Queue depth from the database: the backlog, not the finished events.
    assert value(s, "pgqueue_queue_ready_events", queue="default") == 2
    assert value(s, "pgqueue_queue_scheduled_events", queue="default") == 3
    assert 3600 <= value(s, "pgqueue_queue_oldest_ready_age_seconds", queue="default") < 7200
    assert value(s, "pgqueue_dead_events", event_type="order.poison") == 1
    assert value(s, "pgqueue_in_flight_events") == 0
    [info] = labels_of(s, "pgqueue_worker_info")
    assert info["version"] == version(DISTRIBUTION) and info["worker_id"]

    assert await proc.stop() == 0
    lines = [json.loads(line) for line in proc.stderr().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines), lines
    mine = [line for line in lines if line["logger"] == "pgqueue.worker"]
    assert all(line["worker_id"] == info["worker_id"] for line in mine), mine
    events = {line.get("event") for line in mine}
    assert {"start", "stop"} <= events, mine
    retries = [line for line in mine if line.get("handler") == "bill"]
    assert {r["event_id"] for r in retries} == set(placed)
    assert all(r["attempt"] == 1 and r["error"] == "ConnectionError" for r in retries), retries
    [dead] = [line for line in mine if line.get("handler") == "explode"]
    assert dead["level"] == "warning" and dead["event_id"] == poison
    assert (dead["event_type"], dead["attempt"], dead["error"]) == ("order.poison", 1, "Discard")
    # No payload (the handlers' error messages quote it) and no password anywhere.
    assert MARKER not in proc.stderr()


async def test_processes_serve_port_plus_i(
    db_dsn: str, conn: asyncpg.Connection, procs: list[Proc], tmp_path: Path
) -> None:
    port = free_port(span=2)
    proc = start(procs, tmp_path, db_dsn, "--processes", "2", "--metrics-port", str(port))
    ids = set()
    for child_port in (port, port + 1):
        s = await scrape_when(child_port, lambda s: labels_of(s, "pgqueue_worker_info"))
        ids.add(labels_of(s, "pgqueue_worker_info")[0]["worker_id"])
    assert len(ids) == 2  # two workers, one port each
    event = await pgqueue.enqueue(conn, "order.placed", {})
    await wait_for(
        lambda: _state_is(conn, event, "done"), timeout=30, message="event never finished"
    )
    assert await proc.stop() == 0
    for child_port in (port, port + 1):  # the children stopped serving when they exited
        with pytest.raises(OSError):
            scrape(child_port)


async def _state_is(conn: asyncpg.Connection, event_id: int, state: str) -> bool:
    return bool(
        await conn.fetchval("SELECT state = $2 FROM pgqueue.outbox WHERE id = $1", event_id, state)
    )


async def test_metrics_port_in_use_is_one_error_line(db_dsn: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = await asyncio.to_thread(
            run_cli, "worker", "--burst", "--handlers", HANDLERS, "--metrics-port", str(port),
            "--dsn", db_dsn, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and f"127.0.0.1:{port}" in errors[0], result.stderr
    assert "--metrics-port" in errors[0] and "Traceback" not in result.stderr


async def test_two_workers_in_one_process_keep_their_own_metrics(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Per-worker registries: nothing global, no collision, servers gone after run()."""
    await pgqueue.enqueue_many(
        conn, [pgqueue.Event(event_type="order.poison", payload={}) for _ in range(20)]
    )
    for _ in range(3):
        await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('nobody.listens')")
    metrics = [pgqueue.Metrics(port=0, depth_limit=2), pgqueue.Metrics(port=0, depth_limit=2)]
    workers = [
        pgqueue.Worker(db_dsn, observe_registry, pgqueue.WorkerSettings(poll_interval=0.1),
                       metrics=m)
        for m in metrics
    ]  # fmt: skip
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await wait_for(
            lambda: _count(conn, "dead", 20), timeout=30, message="events never went dead"
        )

        async def recorded() -> bool:
            # The commit is visible before the worker has read the statement's reply and
            # counted it; the counters move together, in the same step.
            return sum(w.stats.dead for w in workers) == 20

        await wait_for(recorded, timeout=10, message="workers never counted the outcomes")
        samples = [
            await scrape_when(
                m.port or 0, lambda s: value(s, "pgqueue_queue_ready_events", queue="default")
            )
            for m in metrics
        ]
    finally:
        for w in workers:
            w.request_stop()
        stats = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    dead = [value(s, "pgqueue_events_total", event_type="order.poison", outcome="dead")
            for s in samples]  # fmt: skip
    assert dead == [st.dead for st in stats] and sum(dead) == 20  # each counts its own
    ids = [labels_of(s, "pgqueue_worker_info")[0]["worker_id"] for s in samples]
    assert ids == [w.worker_id for w in workers] and ids[0] != ids[1]
    # depth_limit bounds the count: 3 ready, counted up to 2.
    assert [value(s, "pgqueue_queue_ready_events", queue="default") for s in samples] == [2, 2]
    assert b"pgqueue_" not in generate_latest(REGISTRY)  # the global registry stays clean
    for m in metrics:
        with pytest.raises(OSError):
            scrape(m.port or 0)


async def _count(conn: asyncpg.Connection, state: str, n: int) -> bool:
    return bool(
        await conn.fetchval("SELECT count(*) = $2 FROM pgqueue.outbox WHERE state = $1", state, n)
    )


async def test_queue_depth_statements_use_the_partial_indexes(conn: asyncpg.Connection) -> None:
    """On 100,000 done rows, the scrape's statements never scan the table."""
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state, processed_at) "
        "SELECT 'old.event', 'done', now() FROM generate_series(1, 100000)"
    )
    await conn.execute("INSERT INTO pgqueue.outbox (event_type, state) VALUES ('x', 'dead')")
    await pgqueue.enqueue_many(conn, [pgqueue.Event(event_type="t", payload={})] * 500)
    await conn.execute("ANALYZE pgqueue.outbox")
    q = queries_for("pgqueue")
    for statement, args in [
        (q.admin.QUEUE_DEPTHS, (["default"], 100_000)),
        (q.admin.DEAD_COUNTS, (100_000,)),
    ]:
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *args)
        text = json.dumps(plan)
        assert "Seq Scan" not in text, plan
        # Dead rows: either partial index of them (outbox_dead_list_idx carries the type too).
        partial = ("outbox_ready_idx", "outbox_final_type_idx", "outbox_dead_list_idx")
        assert any(name in text for name in partial), plan
    rows = await q.admin.queue_depths(conn, ["default", "empty"], 100)
    assert [(r["queue"], r["ready"], r["scheduled"]) for r in rows] == [
        ("default", 100, 0),
        ("empty", 0, 0),
    ]
    assert [tuple(r) for r in await q.admin.dead_counts(conn, 10)] == [("x", 1)]


async def test_shutdown_counts_interrupted_runs_and_handed_back_events(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """Read through the registry (no port): a run cut short by shutdown is 'interrupted', its
    event 'handed_back', as the row shows (pending again, attempt refunded)."""
    registry = pgqueue.Registry()
    started = asyncio.Event()

    @registry.on("slow.event")
    async def hang(payload: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    event_id = await pgqueue.enqueue(conn, "slow.event", {})
    metrics = pgqueue.Metrics()
    settings = pgqueue.WorkerSettings(shutdown_timeout=0, poll_interval=0.1)
    worker = pgqueue.Worker(db_dsn, registry, settings, metrics=metrics)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 30)
    # Read on the worker's own loop while it runs: served at once from the counts (waiting
    # for the loop we are on would time out and count a sample error).
    during = parse(generate_latest(metrics.registry).decode())
    assert value(during, "pgqueue_in_flight_events") == 1
    assert value(during, "pgqueue_queue_sample_errors_total") == 0
    worker.request_stop()
    await asyncio.wait_for(task, 30)
    s = parse(generate_latest(metrics.registry).decode())
    runs = value(s, "pgqueue_handler_runs_total", event_type="slow.event", handler="hang",
                 outcome="interrupted")  # fmt: skip
    assert runs == 1
    assert value(s, "pgqueue_events_total", event_type="slow.event", outcome="handed_back") == 1
    row = await conn.fetchrow("SELECT state, attempt FROM pgqueue.outbox WHERE id = $1", event_id)
    assert (row["state"], row["attempt"]) == ("pending", 0)
