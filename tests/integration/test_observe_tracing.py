"""OpenTelemetry: the producer's trace context travels with the event into the handler spans.

Runs the real opentelemetry-sdk with its in-memory exporter; the tracer provider is passed to
the worker (no global provider is set, so tests stay independent).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgqueue
from pgqueue._migrate import roles_sql
from pgqueue._tracing import Tracing
from tests.helpers import wait_for
from tests.integration.observe_handlers import registry

ROOT = Path(__file__).resolve().parents[2]
SQL_TRACE = "0af7651916cd43dd8448eb211c80319c"
SQL_PARENT = "b7ad6b7169203331"


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _run(dsn: str, provider: TracerProvider | None) -> pgqueue.WorkerStats:
    """Run a worker until no event is pending or running (bill's retry is due 50 ms later,
    after a burst worker would have left)."""
    settings = pgqueue.WorkerSettings(poll_interval=0.05)
    worker = pgqueue.Worker(dsn, registry, settings, tracer_provider=provider)
    task = asyncio.create_task(worker.run())
    conn = await asyncpg.connect(dsn)
    try:
        await wait_for(lambda: _settled(conn, task), timeout=30, message="events never settled")
    finally:
        await conn.close()
        worker.request_stop()
    return await asyncio.wait_for(task, 30)


async def _settled(conn: asyncpg.Connection, task: asyncio.Task[Any]) -> bool:
    if task.done():
        task.result()  # raise what ended the worker
    unfinished = await conn.fetchval(
        "SELECT count(*) FROM pgqueue.outbox WHERE state IN ('pending', 'running')"
    )
    return bool(unfinished == 0)


def _handler_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("process ")]


async def test_handler_spans_continue_the_producers_trace(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    provider, exporter = _provider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as checkout:
        one = await pgqueue.enqueue(conn, "order.placed", {"n": 1})
        [many] = await pgqueue.enqueue_many(
            conn, [pgqueue.Event(event_type="order.poison", payload={})]
        )
    untraced = await pgqueue.enqueue(conn, "order.placed", {"n": 2})
    # Another producer sets the column from SQL.
    from_sql = await conn.fetchval(
        "INSERT INTO pgqueue.outbox (event_type, headers) VALUES ('order.placed', $1::jsonb) "
        "RETURNING id",
        json.dumps({"traceparent": f"00-{SQL_TRACE}-{SQL_PARENT}-01"}),
    )
    stored = dict(await conn.fetch("SELECT id, headers FROM pgqueue.outbox"))
    assert stored[untraced] is None  # no span, no headers
    parent = checkout.get_span_context()
    assert json.loads(stored[one])["traceparent"].split("-")[1:3] == [
        f"{parent.trace_id:032x}",
        f"{parent.span_id:016x}",
    ]

    await _run(db_dsn, provider)

    spans = _handler_spans(exporter)
    by_event: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        assert span.attributes is not None
        by_event.setdefault(int(span.attributes["pgqueue.event_id"]), []).append(span)  # type: ignore[arg-type]
    # order.placed: ship once, bill twice (a durable retry); order.poison: explode once.
    assert sorted(len(v) for v in by_event.values()) == [1, 3, 3, 3]
    for event_id in (one, many):
        for span in by_event[event_id]:
            assert span.parent is not None and span.parent.span_id == parent.span_id
            assert span.context.trace_id == parent.trace_id
    for span in by_event[untraced]:  # a trace of its own
        assert span.parent is None and span.context.trace_id != parent.trace_id
    for span in by_event[from_sql]:
        assert f"{span.context.trace_id:032x}" == SQL_TRACE
        assert span.parent is not None and f"{span.parent.span_id:016x}" == SQL_PARENT
    bill = sorted(
        (s for s in by_event[one] if _attr(s, "pgqueue.handler") == "bill"),
        key=lambda s: _attr(s, "pgqueue.attempt"),
    )
    assert [_attr(s, "pgqueue.attempt") for s in bill] == [1, 2]
    assert [s.status.status_code for s in bill] == [trace.StatusCode.ERROR, trace.StatusCode.UNSET]
    assert _attr(bill[0], "error.type") == "ConnectionError"
    [explode] = by_event[many]
    assert explode.kind is trace.SpanKind.CONSUMER and explode.name == "process order.poison"
    assert explode.status.status_code is trace.StatusCode.ERROR
    assert _attr(explode, "pgqueue.event_type") == "order.poison"
    # The exception's message (it quotes the payload) is not recorded.
    assert not explode.events and "cannot handle" not in (explode.status.description or "")


def _attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes[name]


def test_tracing_is_off_until_a_provider_is_configured() -> None:
    """With the API installed but no SDK configured globally, a worker traces nothing (the
    no-op spans would still cost microseconds per handler run); a given provider turns it on."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert Tracing.for_worker(None) is None
    provider, _ = _provider()
    assert Tracing.for_worker(provider) is not None


NO_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import asyncpg, pgqueue
from pgqueue import _tracing
from tests.helpers import wait_for
from tests.integration.observe_handlers import registry

async def main(dsn):
    assert not _tracing.HAVE_OTEL
    conn = await asyncpg.connect(dsn)
    await pgqueue.enqueue(conn, "order.poison", {})
    await pgqueue.enqueue_many(conn, [pgqueue.Event(event_type="order.poison", payload={})])
    await conn.close()
    worker = pgqueue.Worker(dsn, registry, pgqueue.WorkerSettings(burst=True))
    print((await worker.run()).dead)

asyncio.run(main(sys.argv[1]))
"""


async def test_everything_works_without_opentelemetry(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", NO_OTEL, db_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE headers IS NULL") == 2


async def test_producer_role_may_store_the_trace_context(conn: asyncpg.Connection) -> None:
    """roles.sql grants INSERT (headers): a traced enqueue works as pgqueue_producer."""
    await conn.execute(roles_sql("pgqueue"))
    provider, _ = _provider()
    await conn.execute("SET ROLE pgqueue_producer")
    try:
        with provider.get_tracer("test").start_as_current_span("checkout"):
            event_id = await pgqueue.enqueue(conn, "order.placed", {})
    finally:
        await conn.execute("RESET ROLE")
    headers = await conn.fetchval("SELECT headers FROM pgqueue.outbox WHERE id = $1", event_id)
    assert "traceparent" in json.loads(headers)
