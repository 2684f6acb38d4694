"""pgqueue: a Postgres-only job queue and transactional outbox.

Write events in the same transaction as your data (:func:`enqueue`), register handlers on a
:class:`Registry`, and run ``pgqueue worker --handlers module:registry``. The operator API
(status, listings, retry, discard, replay, prune, the dashboard) is :mod:`pgqueue.admin`;
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
    PayloadError,
    PgQueueError,
    RegistryError,
    SchemaError,
)
from ._inprocess import EventResult, HandlerResult, InProcess
from ._metrics import Metrics
from ._migrate import migrate
from ._models import Context, Event, EventState, HandlerState, WorkerStats
from ._registry import Registry, load_registry
from ._relay import NatsRelay, RabbitMQRelay, RedisRelay, Relay, RelayMessage
from ._schedule import Schedule
from ._settings import WorkerSettings
from ._worker import Worker

__all__ = [
    "ConfigurationError",
    "Context",
    "DatabaseUnavailableError",
    "Discard",
    "Event",
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
]
