"""OpenTelemetry, optional: a producer's trace context travels with its event, and every
handler run is a span that continues it.

Producer side: :func:`producer_headers` returns the current W3C trace context (through the
configured propagator, by default ``traceparent`` / ``tracestate``) as JSON text for the
outbox's ``headers`` column, or None when no span is active, so an untraced enqueue keeps its
statement. Worker side: :class:`Tracing` wraps each handler call in a CONSUMER span whose
parent is the stored context. Nothing here runs without the ``otel`` extra installed, and a
worker only traces when it is given a tracer provider or one was configured globally (an
SDK, e.g. through ``opentelemetry-instrument``): the API's no-op spans still cost a few
microseconds per handler run.

Span attributes name the event id, type, handler and attempt; a failed run gets status ERROR
and ``error.type`` (the exception's class; its message may quote payload data, so it is not
recorded).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

try:
    from opentelemetry import propagate, trace

    HAVE_OTEL = True
except ImportError:  # the otel extra is not installed: tracing is off
    HAVE_OTEL = False


def producer_headers() -> str | None:
    """The active span's trace context as JSON text, or None (no span, or no OpenTelemetry)."""
    if not HAVE_OTEL or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def _parent(headers: str | None) -> Any:
    """The context stored with an event (None: the span starts a new trace)."""
    if headers is None:
        return None
    try:
        data = json.loads(headers)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    # Any SQL client may write this column: only string fields are trace context.
    return propagate.extract({k: v for k, v in data.items() if isinstance(v, str)})


class Tracing:
    """Starts one span per handler run on ``tracer_provider``."""

    def __init__(self, tracer_provider: Any) -> None:
        from ._metrics import _version

        self._tracer = tracer_provider.get_tracer("pgqueue", _version())
        self._consumer = trace.SpanKind.CONSUMER
        self._error = trace.StatusCode.ERROR

    @classmethod
    def for_worker(cls, tracer_provider: Any = None) -> Tracing | None:
        """Tracing with the given provider, else with the global one if an SDK set it; None
        when OpenTelemetry is missing or unconfigured (then handler runs cost nothing extra)."""
        if not HAVE_OTEL:
            return None
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
            if isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
                return None
        return cls(tracer_provider)

    async def run(
        self,
        call: Awaitable[Any],
        headers: str | None,
        event_id: int,
        event_type: str,
        handler: str,
        attempt: int,
    ) -> None:
        """Await ``call`` (one handler run) inside its span."""
        attributes = {
            "messaging.system": "pgqueue",
            "messaging.operation": "process",
            "messaging.message.id": str(event_id),
            "pgqueue.event_id": event_id,
            "pgqueue.event_type": event_type,
            "pgqueue.handler": handler,
            "pgqueue.attempt": attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {event_type}",
            context=_parent(headers),
            kind=self._consumer,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await call
            except BaseException as exc:
                name = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
                span.set_attribute("error.type", name)
                span.set_status(trace.Status(self._error, name))
                raise
