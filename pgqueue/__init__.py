"""pgqueue: a Postgres-only job queue and transactional outbox.

Write events in the same transaction as your data (:func:`enqueue`), register handlers on a
:class:`Registry`, and run ``pgqueue worker --handlers module:registry``.
"""

from ._api import (
    StatusReport,
    count_prunable,
    enqueue,
    enqueue_many,
    once,
    prune,
    retry,
    status,
)
from ._backoff import RetryPolicy
from ._errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    Discard,
    PayloadError,
    PgQueueError,
    RegistryError,
    SchemaError,
)
from ._metrics import Metrics
from ._migrate import migrate
from ._models import Context, Event, EventState, HandlerState, WorkerStats
from ._registry import Registry, load_registry
from ._settings import WorkerSettings
from ._worker import Worker

__all__ = [
    "ConfigurationError",
    "Context",
    "DatabaseUnavailableError",
    "Discard",
    "Event",
    "EventState",
    "HandlerState",
    "Metrics",
    "PayloadError",
    "PgQueueError",
    "Registry",
    "RegistryError",
    "RetryPolicy",
    "SchemaError",
    "StatusReport",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "count_prunable",
    "enqueue",
    "enqueue_many",
    "load_registry",
    "migrate",
    "once",
    "prune",
    "retry",
    "status",
]
