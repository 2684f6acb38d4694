"""The table (median [min-max] per figure, pgqueue beside PgQueuer, ratio), the targets of
issue 4, and the JSON record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._stats import Summary

Medians = dict[str, float]


@dataclass(frozen=True)
class Row:
    """One line of the table: a pgqueue figure and, when there is one, PgQueuer's."""

    label: str
    unit: str
    ours: str
    peer: str | None = None


ROWS = [
    Row("1 single enqueue: Python enqueue()", "ev/s", "enqueue.python", "enqueue.pgqueuer"),
    Row("1 single enqueue: SQL pgqueue.enqueue()", "ev/s", "enqueue.sql_function"),
    Row("1 single enqueue: plain INSERT (ceiling)", "ev/s", "enqueue.plain_insert"),
    Row("2 batch enqueue, 1,000 per call", "ev/s", "batch.pgqueue", "batch.pgqueuer"),
    Row("3 drain 20k, 1 handler (PgQueuer bs=10)", "ev/s", "drain.pgqueue", "drain.pgqueuer_bs10"),
    Row("3 drain 20k, 1 handler (PgQueuer bs=100)", "ev/s", "drain.pgqueue",
        "drain.pgqueuer_bs100"),
    Row("3 drain 20k, 3 handlers per event", "ev/s", "drain3.pgqueue"),
    Row("3 drain 20k vs minimal asyncpg loop (reference)", "ev/s", "drain.pgqueue",
        "drain.minimal"),
    Row("3 worker CPU per event, 1 handler (bs=10)", "us", "cpu_us.pgqueue",
        "cpu_us.pgqueuer_bs10"),
    Row("3 worker CPU per event, 1 handler (bs=100)", "us", "cpu_us.pgqueue",
        "cpu_us.pgqueuer_bs100"),
    Row("3 worker CPU per event, 3 handlers", "us", "cpu_us3.pgqueue"),
    Row("4 latency commit->start p50", "ms", "latency_p50.pgqueue", "latency_p50.pgqueuer"),
    Row("4 latency commit->start p99", "ms", "latency_p99.pgqueue", "latency_p99.pgqueuer"),
    Row("4 latency call->start p50", "ms", "latency_call_p50.pgqueue", "latency_call_p50.pgqueuer"),
    Row("4 latency call->start p99", "ms", "latency_call_p99.pgqueue", "latency_call_p99.pgqueuer"),
    Row("5 sustained: producer rate achieved", "ev/s", "sustained_rate.pgqueue",
        "sustained_rate.pgqueuer"),
    Row("5 sustained: backlog when producer stops", "events", "sustained_backlog.pgqueue",
        "sustained_backlog.pgqueuer"),
    Row("5 sustained: catch-up after producer stops", "s", "sustained_catch_up_s.pgqueue",
        "sustained_catch_up_s.pgqueuer"),
    Row("5 sustained: caught up within 60 s (1 = yes)", "", "sustained_caught_up.pgqueue",
        "sustained_caught_up.pgqueuer"),
    Row("5 sustained: lag p50 (start - created_at)", "ms", "sustained_lag_p50.pgqueue",
        "sustained_lag_p50.pgqueuer"),
    Row("5 sustained: lag p99 (start - created_at)", "ms", "sustained_lag_p99.pgqueue",
        "sustained_lag_p99.pgqueuer"),
    Row("5 sustained: DB lag p99 (processed_at - created_at)", "ms",
        "sustained_db_lag_p99.pgqueue"),
    Row("6 drain 20k, empty outbox", "ev/s", "growth_empty.pgqueue"),
    Row("6 drain 20k, 1M processed rows present", "ev/s", "growth_full.pgqueue"),
    Row("6 ratio 1M-present / empty", "x", "growth_ratio"),
    Row("7 worker peak RSS after 200k events", "MB", "memory_peak_mb.pgqueue",
        "memory_peak_mb.pgqueuer"),
    Row("7 worker peak RSS at 20k events", "MB", "memory_at_20k_mb.pgqueue",
        "memory_at_20k_mb.pgqueuer"),
    Row("7 RSS growth 20k -> 200k", "MB", "memory_growth_mb.pgqueue",
        "memory_growth_mb.pgqueuer"),
    Row("7 drain 200k, 1 handler (PgQueuer bs=100)", "ev/s", "drain200k.pgqueue",
        "drain200k.pgqueuer"),
    Row("8 producers, 1 client: outbox vs plain table", "tps", "producers.outbox.c1",
        "producers.plain.c1"),
    Row("8 producers, 1 client: outbox, NOTIFY off vs plain", "tps",
        "producers.outbox_nonotify.c1", "producers.plain.c1"),
    Row("8 producers, 1 client: latency outbox vs plain", "ms", "producers_ms.outbox.c1",
        "producers_ms.plain.c1"),
    Row("8 producers, 1 client: outbox / plain, per run", "x", "producers_ratio.c1"),
    Row("8 producers, 16 clients: outbox vs plain table", "tps", "producers.outbox.c16",
        "producers.plain.c16"),
    Row("8 producers, 16 clients: outbox, NOTIFY off vs plain", "tps",
        "producers.outbox_nonotify.c16", "producers.plain.c16"),
    Row("8 producers, 16 clients: latency outbox vs plain", "ms", "producers_ms.outbox.c16",
        "producers_ms.plain.c16"),
    Row("8 producers, 16 clients: outbox / plain, per run", "x", "producers_ratio.c16"),
    Row("8 producers, 64 clients: outbox vs plain table", "tps", "producers.outbox.c64",
        "producers.plain.c64"),
    Row("8 producers, 64 clients: outbox, NOTIFY off vs plain", "tps",
        "producers.outbox_nonotify.c64", "producers.plain.c64"),
    Row("8 producers, 64 clients: latency outbox vs plain", "ms", "producers_ms.outbox.c64",
        "producers_ms.plain.c64"),
    Row("8 producers, 64 clients: outbox / plain, per run", "x", "producers_ratio.c64"),
    Row("8 producers, max clients: outbox vs plain table", "tps", "producers.outbox.cmax",
        "producers.plain.cmax"),
    Row("8 producers, max clients: outbox, NOTIFY off vs plain", "tps",
        "producers.outbox_nonotify.cmax", "producers.plain.cmax"),
    Row("8 producers, max clients: latency outbox vs plain", "ms", "producers_ms.outbox.cmax",
        "producers_ms.plain.cmax"),
    Row("8 producers, max clients: outbox / plain, per run", "x", "producers_ratio.cmax"),
    Row("8 producers, max clients: how many", "", "producers_clients.cmax"),
    Row("9 dashboard p95: overview", "ms", "dashboard_p95_ms.overview"),
    Row("9 dashboard p95: events", "ms", "dashboard_p95_ms.events"),
    Row("9 dashboard p95: events_dead", "ms", "dashboard_p95_ms.events_dead"),
    Row("9 dashboard p95: events_dead_type", "ms", "dashboard_p95_ms.events_dead_type"),
    Row("9 dashboard p95: events_dead_older", "ms", "dashboard_p95_ms.events_dead_older"),
    Row("9 dashboard p95: events_pending_queue", "ms", "dashboard_p95_ms.events_pending_queue"),
    Row("9 dashboard p95: events_handler_dead", "ms", "dashboard_p95_ms.events_handler_dead"),
    Row("9 dashboard p95: event", "ms", "dashboard_p95_ms.event"),
    Row("9 dashboard p95: dead", "ms", "dashboard_p95_ms.dead"),
    Row("9 dashboard p95: schedules", "ms", "dashboard_p95_ms.schedules"),
    Row("9 dashboard p95: limits", "ms", "dashboard_p95_ms.limits"),
    Row("9 dashboard p95: workers", "ms", "dashboard_p95_ms.workers"),
    Row("9 dashboard p95: retry_preview_type", "ms", "dashboard_p95_ms.retry_preview_type"),
    Row("9 dashboard p95: retry_preview_all", "ms", "dashboard_p95_ms.retry_preview_all"),
    Row("9 dashboard p95: worst page", "ms", "dashboard_p95_ms.worst_page"),
    Row("9 dashboard overview statements, backend CPU", "ms",
        "dashboard_cpu_ms.overview_statements"),
    Row("9 reference: naive count(*) GROUP BY state", "ms",
        "dashboard_p95_ms.naive_count_reference"),
    Row("10 relay 20k: no-op handler (worker pace)", "ev/s", "relay_noop"),
    Row("10 relay NATS: batch path (vs per-event publish)", "ev/s", "relay_batch.nats",
        "relay_event.nats"),
    Row("10 relay Redis: batch path (vs per-event XADD)", "ev/s", "relay_batch.redis",
        "relay_event.redis"),
    Row("10 relay RabbitMQ quorum: batch (vs per-event)", "ev/s", "relay_batch.rabbitmq",
        "relay_event.rabbitmq"),
    Row("10 relay worker CPU per event, NATS", "us", "relay_batch_cpu_us.nats",
        "relay_event_cpu_us.nats"),
    Row("10 relay worker CPU per event, Redis", "us", "relay_batch_cpu_us.redis",
        "relay_event_cpu_us.redis"),
    Row("10 relay worker CPU per event, RabbitMQ", "us", "relay_batch_cpu_us.rabbitmq",
        "relay_event_cpu_us.rabbitmq"),
    Row("11 drain 100k, distinct keys, ordered (vs unkeyed)", "ev/s", "ordering.keyed_ordered",
        "ordering.unkeyed"),
    Row("11 ordered / unkeyed, per run", "x", "ordering.ratio"),
]  # fmt: skip


@dataclass(frozen=True)
class Target:
    """A target of issue 4, checked on medians."""

    text: str
    keys: tuple[str, ...]
    check: Callable[[Medians], bool]


TARGETS = [
    Target("drain, 1 handler >= 30,000 ev/s", ("drain.pgqueue",),
           lambda m: m["drain.pgqueue"] >= 30_000),
    Target("drain, 1 handler >= 3x PgQueuer best (bs=100)",
           ("drain.pgqueue", "drain.pgqueuer_bs100"),
           lambda m: m["drain.pgqueue"] >= 3 * m["drain.pgqueuer_bs100"]),
    Target("drain, 3 handlers >= 20,000 ev/s", ("drain3.pgqueue",),
           lambda m: m["drain3.pgqueue"] >= 20_000),
    Target("enqueue_many >= 100,000 ev/s", ("batch.pgqueue",),
           lambda m: m["batch.pgqueue"] >= 100_000),
    Target("single enqueue >= 90% of plain INSERT", ("enqueue.python", "enqueue.plain_insert"),
           lambda m: m["enqueue.python"] >= 0.9 * m["enqueue.plain_insert"]),
    Target("latency p50 <= 1 ms", ("latency_p50.pgqueue",),
           lambda m: m["latency_p50.pgqueue"] <= 1.0),
    Target("latency p99 <= 2 ms", ("latency_p99.pgqueue",),
           lambda m: m["latency_p99.pgqueue"] <= 2.0),
    Target("sustained: keeps up (backlog at stop < 1 s of load)",
           ("sustained_backlog.pgqueue", "sustained_rate.pgqueue"),
           lambda m: m["sustained_backlog.pgqueue"] < m["sustained_rate.pgqueue"]),
    Target("sustained: lag p99 < 100 ms", ("sustained_lag_p99.pgqueue",),
           lambda m: m["sustained_lag_p99.pgqueue"] < 100),
    Target("1M processed rows: drain >= 90% of empty", ("growth_ratio",),
           lambda m: m["growth_ratio"] >= 0.9),
    Target("producers, 16 clients: outbox >= 0.85x plain table (issue 10)",
           ("producers.outbox.c16", "producers.plain.c16"),
           lambda m: m["producers.outbox.c16"] >= 0.85 * m["producers.plain.c16"]),
    Target("producers, 64 clients: outbox >= 0.85x plain table (issue 10)",
           ("producers.outbox.c64", "producers.plain.c64"),
           lambda m: m["producers.outbox.c64"] >= 0.85 * m["producers.plain.c64"]),
    Target("RSS growth 20k -> 200k < 10 MB", ("memory_growth_mb.pgqueue",),
           lambda m: m["memory_growth_mb.pgqueue"] < 10),
    Target("dashboard: every page < 100 ms server time (p95, 1M events, 100k dead)",
           ("dashboard_p95_ms.worst_page",),
           lambda m: m["dashboard_p95_ms.worst_page"] < 100),
    Target("relay to NATS >= 15,000 ev/s (issue 13)", ("relay_batch.nats",),
           lambda m: m["relay_batch.nats"] >= 15_000),
    Target("relay to Redis >= 15,000 ev/s (issue 13)", ("relay_batch.redis",),
           lambda m: m["relay_batch.redis"] >= 15_000),
    Target("relay to a RabbitMQ quorum queue >= 3,000 ev/s (issue 13)",
           ("relay_batch.rabbitmq",), lambda m: m["relay_batch.rabbitmq"] >= 3_000),
]  # fmt: skip


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(s: Summary | None) -> str:
    if s is None:
        return "-"
    if len(s.runs) == 1:
        return _num(s.median)
    return f"{_num(s.median)} [{_num(s.low)}-{_num(s.high)}]"


def table(summaries: dict[str, Summary]) -> str:
    """The figures that were measured, as aligned text."""
    lines = [("figure", "unit", "pgqueue", "PgQueuer", "ratio")]
    for row in ROWS:
        ours = summaries.get(row.ours)
        if ours is None:
            continue
        peer = summaries.get(row.peer) if row.peer else None
        ratio = f"{ours.median / peer.median:.2f}x" if peer and peer.median else ""
        lines.append((row.label, row.unit, _cell(ours), _cell(peer), ratio))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(summaries: dict[str, Summary]) -> list[dict[str, object]]:
    """Each target whose figures were measured: met or missed."""
    medians = {k: s.median for k, s in summaries.items()}
    return [
        {"target": t.text, "met": t.check(medians), "values": {k: medians[k] for k in t.keys}}
        for t in TARGETS
        if all(k in medians for k in t.keys)
    ]


def targets_text(checked: list[dict[str, object]]) -> str:
    """One line per target."""
    lines = []
    for t in checked:
        values = t["values"]
        assert isinstance(values, dict)
        shown = ", ".join(f"{k}={_num(v)}" for k, v in values.items())
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}  ({shown})")
    return "\n".join(lines)
