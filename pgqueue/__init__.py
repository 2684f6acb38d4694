"""pgqueue: a Postgres-only job queue and transactional outbox.

Write events in the same transaction as your data (:func:`enqueue`), register handlers on a
:class:`Registry`, and run ``pgqueue worker --handlers module:registry``. The operator API
(status, listings, retry, discard, replay, cancel, pause, prune, the dashboard) is
:mod:`pgqueue.admin`; :func:`wait` waits for an event's outcome. Relays to a broker are in
:mod:`pgqueue.relay`, every error class in :mod:`pgqueue.errors` (the ones a producer or a
handler meets are here too), pytest helpers in :mod:`pgqueue.testing`.
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
from ._errors import Discard, PayloadError, PgQueueError
from ._inprocess import EventResult, HandlerResult, InProcess
from ._metrics import Metrics
from ._migrate import migrate
from ._models import Context, Event, EventState, HandlerState, WorkerStats
from ._registry import Registry, load_registry
from ._schedule import Schedule
from ._settings import WorkerSettings
from ._wait import WaitResult, wait
from ._worker.worker import Worker

__all__ = [
    "Context",
    "Discard",
    "Event",
    "EventResult",
    "EventState",
    "HandlerResult",
    "HandlerState",
    "InProcess",
    "Metrics",
    "PayloadError",
    "PgQueueError",
    "Registry",
    "RetryPolicy",
    "Schedule",
    "WaitResult",
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
