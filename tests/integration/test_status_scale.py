"""`pgqueue status` (and --watch, the metrics) with very many event types (issue 11, item 3).

Event types are data: a producer bug that puts ids into them makes 100,000 types. The tests
check the shape, not the time (bench/status_probe.py measures it): the report's rows are read a
fixed number of times whatever the number of types, and the human output is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pgqueue
from pgqueue._api import StatusReport, StatusRow
from pgqueue._cli.admin import print_status
from pgqueue._cli.watch import render
from pgqueue._inspect import LiveStatus, LiveTypeCounts
from pgqueue._metrics import DEAD_TYPES, OTHER_TYPES
from tests.helpers import wait_for
from tests.integration.observe_handlers import registry as observe_registry
from tests.integration.test_core_cli import cli


class CountedRows(list[StatusRow]):
    """The report's rows, counting how often they are walked (the quadratic version walked
    them once per event type)."""

    walks = 0

    def __iter__(self) -> Iterator[StatusRow]:
        self.walks += 1
        return super().__iter__()


def report(types: int) -> StatusReport:
    rows = CountedRows()
    for i in range(types):
        rows.append(StatusRow(f"t.{i:06d}", "pending", i % 7, 1.0))
        rows.append(StatusRow(f"t.{i:06d}", "done", 3, None))
    return StatusReport(counts=rows, dead_handlers=[(f"t.{i:06d}", "h", i) for i in range(types)])


@pytest.mark.parametrize("types", [10, 1_000, 20_000])
def test_status_reads_its_rows_a_fixed_number_of_times_and_prints_the_top(
    types: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report(types)
    print_status(data, 50)
    assert isinstance(data.counts, CountedRows) and data.counts.walks <= 2  # not ~types
    lines = capsys.readouterr().out.splitlines()
    shown = [line for line in lines if line.startswith("t.")]
    assert len(shown) == min(types, 50) * 2  # types table + dead-handler table
    if types > 50:
        assert f"... and {types - 50} more event types (--all shows all)" in lines
        assert f"... and {types - 50} more dead handlers (--all shows all)" in lines
    # Largest backlog first (pending i % 7: the 6s first, by name), then the rest.
    first = lines[1].split()
    assert first[0] == "t.000006" and first[1] == "6"


def test_status_all_prints_every_type(capsys: pytest.CaptureFixture[str]) -> None:
    print_status(report(3_000), None)
    out = capsys.readouterr().out
    assert out.count("\nt.") == 6_000 and "more event types" not in out


def test_watch_shows_the_top_types_by_backlog_and_says_how_many_more() -> None:
    snapshot = LiveStatus(
        window=2.0,
        types=[LiveTypeCounts(event_type=f"t.{i:06d}", pending=i) for i in range(5_000)],
        handlers=[],
        db_now=dt.datetime.now(dt.UTC),
    )
    lines = render(snapshot, 2.0, 50)
    rows = [line for line in lines if line.startswith("t.")]
    assert len(rows) == 50 and rows[0].split()[:2] == ["t.004999", "4999"]
    assert lines[-1] == "... and 4950 more event types (--all shows all)"
    assert len([line for line in render(snapshot, 2.0, None) if line.startswith("t.")]) == 5_000


async def test_status_cli_with_many_types_is_bounded_and_all_shows_all(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type) SELECT 'zz.t' || g FROM generate_series(1, 3000) g"
    )
    await conn.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('zz.t77'), ('zz.t77')")
    bounded = await cli("status", "--dsn", db_dsn)
    assert bounded.returncode == 0, bounded.stderr
    lines = bounded.stdout.splitlines()
    assert lines[1].split()[:2] == ["zz.t77", "3"]  # the largest backlog first
    assert len([line for line in lines if line.startswith("zz.")]) == 50
    assert "... and 2950 more event types (--all shows all)" in lines
    top = await cli("status", "--top", "5", "--dsn", db_dsn)
    assert len([line for line in top.stdout.splitlines() if line.startswith("zz.")]) == 5
    every = await cli("status", "--all", "--dsn", db_dsn)
    assert every.returncode == 0, every.stderr
    assert len([line for line in every.stdout.splitlines() if line.startswith("zz.")]) == 3000


async def test_the_dead_events_gauge_has_a_bounded_number_of_series(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    types = DEAD_TYPES + 50
    await conn.execute(
        "INSERT INTO pgqueue.outbox (event_type, state) "
        "SELECT 'zz.t' || g, 'dead' FROM generate_series(1, $1::int) g",
        types,
    )
    await conn.execute("INSERT INTO pgqueue.outbox (event_type, state) VALUES ('zz.t9', 'dead')")
    metrics = pgqueue.Metrics(min_sample_interval=0.0)
    worker = pgqueue.Worker(
        db_dsn, observe_registry, pgqueue.WorkerSettings(poll_interval=0.1), metrics=metrics
    )
    task = asyncio.create_task(worker.run())
    samples: dict[str, Any] = {}
    try:

        async def scraped() -> bool:
            from prometheus_client import generate_latest

            text = await asyncio.to_thread(generate_latest, metrics.registry)
            families = text_string_to_metric_families(text.decode())
            dead = [f for f in families if f.name == "pgqueue_dead_events"]
            samples.update(
                {s.labels["event_type"]: s.value for s in dead[0].samples} if dead else {}
            )
            return bool(samples)

        await wait_for(scraped, timeout=20, message="no dead-events gauge")
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    assert len(samples) == DEAD_TYPES + 1
    assert samples["zz.t9"] == 2  # the most dead first
    assert samples[OTHER_TYPES] == types + 1 - sum(
        v for k, v in samples.items() if k != OTHER_TYPES
    )
