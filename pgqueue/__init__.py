"""pgqueue: a Postgres-only job queue and transactional outbox.

Write events in the same transaction as your data (:func:`enqueue`), register handlers on a
:class:`Registry`, and run ``pgqueue worker --handlers module:registry``. The operator API
(status, listings, retry, discard, replay, cancel, pause, prune, the dashboard) is
:mod:`pgqueue.admin`; :func:`wait` waits for an event's outcome;
helpers for testing code that uses pgqueue are in :mod:`pgqueue.testing`.
"""

from ._api import (
    enqueue,
    enqueue_many,
    enqueue_many_sync,
    enqueue_sync,
    once,
    once_sync,
)
from ._backoff import RetryPolicy
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
from ._metrics import Metrics
from ._migrate import migrate
from ._models import Context, Event, EventState, HandlerState, WorkerStats
from ._registry import Registry, load_registry
from ._relay import NatsRelay, RabbitMQRelay, RedisRelay, Relay, RelayMessage
from ._schedule import Schedule
from ._settings import WorkerSettings
from ._wait import WaitResult, wait
from ._worker.worker import Worker

__all__ = [
    "ConfigurationError",
    "Context",
    "DatabaseUnavailableError",
    "Discard",
    "Event",
    "EventNotFound",
    "EventResult",
    "EventState",
    "HandlerResult",
    "HandlerState",
    "InProcess",
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
    "RetryPolicy",
    "Schedule",
    "SchemaError",
    "WaitResult",
    "WaitTimeout",
    "Worker",
    "WorkerSettings",
    "WorkerStats",
    "enqueue",
    "enqueue_many",
    "enqueue_many_sync",
    "enqueue_sync",
    "load_registry",
    "migrate",
    "once",
    "once_sync",
    "wait",
]
