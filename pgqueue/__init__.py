"""pgqueue: a Postgres-only job queue and transactional outbox.

Write events in the same transaction as your data (:func:`enqueue`), register handlers on a
:class:`Registry`, and run ``pgqueue worker --handlers module:registry``.
"""

from ._api import (
    StatusReport,
    count_prunable,
    enqueue,
    enqueue_many,
    enqueue_many_sync,
    enqueue_sync,
    once,
    once_sync,
    prune,
    status,
)
from ._backoff import RetryPolicy
from ._dashboard import pgqueue_dashboard
from ._errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    Discard,
    PayloadError,
    PgQueueError,
    RegistryError,
    SchemaError,
)
from ._inprocess import EventResult, HandlerResult, InProcess
from ._inspect import (
    EventDetail,
    EventPage,
    EventSummary,
    HandlerDetail,
    LiveHandlerCount,
    LiveStatus,
    LiveTypeCounts,
    get_event,
    list_events,
    live_status,
)
from ._metrics import Metrics
from ._migrate import migrate
from ._models import Context, Event, EventState, HandlerState, WorkerStats
from ._presence import WorkerInfo, list_workers
from ._registry import Registry, load_registry
from ._relay import NatsRelay, RabbitMQRelay, RedisRelay, Relay, RelayMessage
from ._scheduler import Schedule
from ._settings import WorkerSettings
from ._steer import (
    ReplayPreview,
    ReplayResult,
    count_dead,
    discard,
    preview_replay,
    replay,
    retry,
)
from ._worker import Worker

__all__ = [
    "ConfigurationError",
    "Context",
    "DatabaseUnavailableError",
    "Discard",
    "Event",
    "EventDetail",
    "EventPage",
    "EventResult",
    "EventState",
    "EventSummary",
    "HandlerDetail",
    "HandlerResult",
    "HandlerState",
    "InProcess",
    "LiveHandlerCount",
    "LiveStatus",
    "LiveTypeCounts",
    "Metrics",
    "NatsRelay",
    "PayloadError",
    "PgQueueError",
    "RabbitMQRelay",
    "RedisRelay",
    "Registry",
    "RegistryError",
    "Relay",
    "RelayMessage",
    "ReplayPreview",
    "ReplayResult",
    "RetryPolicy",
    "Schedule",
    "SchemaError",
    "StatusReport",
    "Worker",
    "WorkerInfo",
    "WorkerSettings",
    "WorkerStats",
    "count_dead",
    "count_prunable",
    "discard",
    "enqueue",
    "enqueue_many",
    "enqueue_many_sync",
    "enqueue_sync",
    "get_event",
    "list_events",
    "list_workers",
    "live_status",
    "load_registry",
    "migrate",
    "once",
    "once_sync",
    "pgqueue_dashboard",
    "preview_replay",
    "prune",
    "replay",
    "retry",
    "status",
]
