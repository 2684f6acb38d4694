"""Figure 9: the dashboard's server time per page on an outbox of 1,000,000 events with 100,000
dead (issue 14's target: every page under 100 ms).

The outbox: 5 event types over 3 queues; 100,000 dead (two handlers, one dead with one of 7
errors) spread over the whole table (1 row in 10: the worst case, every page holds some), a
backlog of 18,000 pending among the newest events (1 in 100 an hour ahead) and 1,000 running
just before them, the rest done; the
newest 200,000 events created (and done) within the last hour, so the throughput chart's
minutes pass its read cap and take the estimating path, the older ones over a week before.
Then VACUUM ANALYZE, as autovacuum would have.

Each page is requested through the ASGI interface in this process (no HTTP, no network:
what is timed is the app's own work, database included), 2 times to warm up and then
REQUESTS times; the figure is the 95th percentile. The reference, measured in the same run,
is what a dashboard that counts every state with one plain `count(*) ... GROUP BY state` pays
per page on the same table.

On a machine shared with other work, wall times grow with the load; so the overview's
statements (its heaviest page) are also measured in backend CPU time (utime + stime of the
backend from /proc, parallel query off so that all of it is in that backend), which busy
neighbours barely change.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import asyncpg

import pgqueue
import pgqueue.admin
from pgqueue._dashboard._pages import CHART_CAP
from pgqueue._dashboard._security import csrf_token
from pgqueue._queries import queries_for

from ._options import Bench, Figures
from .statement_probe import cpu_seconds

EVENTS = 1_000_000
REQUESTS = 20
TOKEN = "bench-token-0123456789"

FILL = """
INSERT INTO pgqueue.outbox (event_type, queue, payload, state, attempt, run_at, created_at,
                            processed_at, handlers, last_error, lease_token, leased_by,
                            lease_expires_at)
SELECT (ARRAY['order.paid', 'invoice.sent', 'user.signup', 'report.built',
              'email.bounced'])[(g / 10) % 5 + 1],
       (ARRAY['default', 'billing', 'reports'])[(g / 10) % 3 + 1],
       jsonb_build_object('n', g, 'email', 'customer' || g || '@example.com'),
       s.state,
       CASE s.state WHEN 'dead' THEN 3 WHEN 'pending' THEN 0 ELSE 1 END,
       CASE WHEN s.state = 'pending' AND g % 100 = 1 THEN now() + interval '30 minutes'
            ELSE c.created END,
       c.created,
       CASE WHEN s.state = 'done' THEN c.created + interval '1 second' END,
       CASE WHEN s.state = 'dead' THEN jsonb_build_object(
           'mail', jsonb_build_object('state', 'dead', 'attempts', 3,
                                      'error', 'SMTPError: 421 try later (relay ' || g % 7 || ')'),
           'crm', jsonb_build_object('state', 'done', 'attempts', 1)) END,
       CASE WHEN s.state = 'dead' THEN 'SMTPError: 421 try later (relay ' || g % 7 || ')' END,
       CASE WHEN s.state = 'running' THEN gen_random_uuid() END,
       CASE WHEN s.state = 'running' THEN 'bench-worker' END,
       CASE WHEN s.state = 'running' THEN now() + interval '30 seconds' END
FROM generate_series(1, $1::int) AS g
CROSS JOIN LATERAL (SELECT CASE
    WHEN g % 10 = 0 THEN 'dead'
    WHEN g > $1 - 22500 AND g % 10 <> 0 AND g % 9 <> 0 THEN 'pending'
    WHEN g > $1 - 22500 - 10000 AND g % 10 = 3 THEN 'running'
    ELSE 'done' END AS state) AS s
CROSS JOIN LATERAL (SELECT CASE
    WHEN g > $1 - 200000 THEN now() - ($1 - g) * interval '18 milliseconds'
    ELSE now() - interval '1 hour' - ($1 - 200000 - g) * interval '750 milliseconds'
    END AS created) AS c
"""

EXTRAS = """
INSERT INTO pgqueue.schedules (name, expression, timezone, event_type, payload, queue,
                               priority, last_tick)
SELECT 'schedule-' || g, '*/5 * * * *', 'UTC', 'report.built', '{}', 'reports', 0,
       now() - interval '1 minute' * g
FROM generate_series(1, 10) AS g;
INSERT INTO pgqueue.handler_limits (handler, concurrency) VALUES ('mail', 5), ('crm', 20);
INSERT INTO pgqueue.workers (worker_id, host, pid, version, queues, event_types, expires_at)
SELECT 'bench-' || g, 'host-' || g % 3, 1000 + g, '0.1.0', ARRAY['default'],
       ARRAY['order.paid'], now() + interval '1 hour'
FROM generate_series(1, 8) AS g;
"""

NAIVE_COUNT = "SELECT state, count(*) FROM pgqueue.outbox GROUP BY state"


async def _fill(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL, EVENTS)
        await conn.execute(EXTRAS)
        await conn.execute("VACUUM ANALYZE pgqueue.outbox")
        dead_id: int = await conn.fetchval(
            "SELECT max(id) FROM pgqueue.outbox WHERE state = 'dead'"
        )
        return dead_id
    finally:
        await conn.close()


async def _call(app: Any, method: str, path: str, query: str = "", body: bytes = b"") -> int:
    """One request through the ASGI interface; returns the status."""
    headers = [
        (b"host", b"bench"),
        (b"authorization", f"Bearer {TOKEN}".encode()),
        (b"content-type", b"application/x-www-form-urlencoded"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    status = 0
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _time(call: Any) -> list[float]:
    for _ in range(2):
        await call()
    times = []
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        status = await call()
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"status {status}")
    return times


def _p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20)[-1]


async def run(bench: Bench) -> Figures:
    async with bench.db.fresh() as dsn:
        dead_id = await _fill(dsn)
        app = pgqueue.admin.pgqueue_dashboard(dsn, allow_actions=True, token=TOKEN)
        csrf = csrf_token(app.dashboard.settings, "token")
        form = f"csrf={csrf}&action=retry".encode()
        pages: dict[str, tuple[str, str, str, bytes]] = {
            "overview": ("GET", "/", "", b""),
            "events": ("GET", "/events", "", b""),
            "events_dead": ("GET", "/events", "state=dead", b""),
            "events_dead_type": ("GET", "/events", "state=dead&type=invoice.sent", b""),
            "events_dead_older": ("GET", "/events", "state=dead&before_id=500000", b""),
            "events_pending_queue": ("GET", "/events", "state=pending&queue=billing", b""),
            "events_handler_dead": ("GET", "/events", "handler=mail&handler_state=dead", b""),
            "event": ("GET", f"/events/{dead_id}", "", b""),
            "dead": ("GET", "/dead", "", b""),
            "schedules": ("GET", "/schedules", "", b""),
            "limits": ("GET", "/limits", "", b""),
            "workers": ("GET", "/workers", "", b""),
            "retry_preview_type": ("POST", "/actions/dead", "", form + b"&type=invoice.sent"),
            "retry_preview_all": ("POST", "/actions/dead", "", form + b"&all=1"),
        }
        figures: Figures = {}
        try:
            for name, (method, path, query, body) in pages.items():
                times = await _time(
                    lambda m=method, p=path, q=query, b=body: _call(app, m, p, q, b)
                )
                figures[f"dashboard_p95_ms.{name}"] = _p95(times)
                print(
                    f"  dashboard {name:22} p50 {statistics.median(times):6.1f} ms  "
                    f"p95 {_p95(times):6.1f} ms",
                    file=sys.stderr,
                )
        finally:
            await app.dashboard.aclose()
        conn = await asyncpg.connect(dsn)
        try:

            async def naive() -> int:
                await conn.fetch(NAIVE_COUNT)
                return 200

            times = await _time(naive)
        finally:
            await conn.close()
        figures["dashboard_p95_ms.naive_count_reference"] = _p95(times)
        print(f"  naive count(*) GROUP BY state   p95 {_p95(times):6.1f} ms", file=sys.stderr)
        figures["dashboard_cpu_ms.overview_statements"] = await _overview_cpu(dsn)
        print(
            "  overview statements, backend CPU "
            f"{figures['dashboard_cpu_ms.overview_statements']:6.1f} ms",
            file=sys.stderr,
        )
        figures["dashboard_p95_ms.worst_page"] = max(
            v
            for k, v in figures.items()
            if k.startswith("dashboard_p95_ms.") and "reference" not in k
        )
        return figures


async def _overview_cpu(dsn: str) -> float:
    """Backend CPU milliseconds of the overview's statements (counts and chart), per page."""
    queries = queries_for("pgqueue").dashboard
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET max_parallel_workers_per_gather = 0")
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")

        # The chart's created-per-minute boundaries: every minute at a dashboard's first view,
        # then (Dashboard.created_ids keeps the past ones) only the newest minute, searched from
        # the boundary before it: the worst case of a refresh, a new minute every time.
        starts = [r["start"] for r in await queries.throughput(conn, CHART_CAP)]
        first_view = cpu_seconds(pid)
        known, _ = await queries.created_bounds(conn, starts, 1)
        first_view = cpu_seconds(pid) - first_view
        print(f"  chart, first view: every minute's created ids, backend CPU "
              f"{first_view * 1000:6.1f} ms", file=sys.stderr)  # fmt: skip

        async def page() -> None:
            await queries.overview_counts(conn)
            await queries.throughput(conn, CHART_CAP)
            await queries.created_bounds(conn, starts[-1:], known[starts[-2]])

        await page()
        before = cpu_seconds(pid)
        for _ in range(REQUESTS):
            await page()
        return (cpu_seconds(pid) - before) / REQUESTS * 1000
    finally:
        await conn.close()
