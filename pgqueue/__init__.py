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
from ._cancel import CancelCount, cancel, count_cancellable, reschedule
from ._dashboard import pgqueue_dashboard
from ._errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    Discard,
    EventNotFound,
    PayloadError,
    PgQueueError,
    RegistryError,
    SchemaError,
    WaitTimeout,
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
from ._pauses import QueuePause, list_paused, pause_queue, resume_queue
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
from ._wait import WaitResult, wait
from ._worker import Worker

__all__ = [
    "CancelCount",
    "ConfigurationError",
    "Context",
    "DatabaseUnavailableError",
    "Discard",
    "Event",
    "EventDetail",
    "EventNotFound",
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
    "QueuePause",
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
    "WaitResult",
    "WaitTimeout",
    "Worker",
    "WorkerInfo",
    "WorkerSettings",
    "WorkerStats",
    "cancel",
    "count_cancellable",
    "count_dead",
    "count_prunable",
    "discard",
    "enqueue",
    "enqueue_many",
    "enqueue_many_sync",
    "enqueue_sync",
    "get_event",
    "list_events",
    "list_paused",
    "list_workers",
    "live_status",
    "load_registry",
    "migrate",
    "once",
    "once_sync",
    "pause_queue",
    "pgqueue_dashboard",
    "preview_replay",
    "prune",
    "replay",
    "reschedule",
    "resume_queue",
    "retry",
    "status",
    "wait",
]
