"""Log formatting for the CLI: one line per record, as text or as one JSON object.

The library only logs (logger ``pgqueue.worker`` and friends) and passes structured fields
with ``extra=`` (``event_id``, ``event_type``, ``handler``, ``attempt``, ``error``, ...); the
CLI calls :func:`configure` once. Payloads and passwords never reach a log record: messages
name event ids, types, handlers and exception types, and DSNs are masked before logging.

The worker id rides in a context variable set by ``Worker.run`` (every task it starts
inherits it), so two workers in one process each stamp their own id.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

# Set by Worker.run for the tasks of one worker; read by the JSON formatter.
WORKER_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pgqueue_worker_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Attributes every LogRecord has: anything else on a record came in through ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None)).keys()
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, worker_id and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record``; values JSON cannot hold are written as their ``str``."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        worker_id = WORKER_ID.get()
        if worker_id is not None:
            out["worker_id"] = worker_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) at ``level`` in ``fmt`` (text or json).

    Called once, by the CLI; a library user configures logging as usual instead.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
