"""pgqueue.admin: the operator API, beside the producer and worker API of ``pgqueue``.

Look at the queue (:func:`status`, :func:`live_status`, :func:`list_events`,
:func:`get_event`, :func:`list_workers`), steer dead events (:func:`retry`, :func:`discard`,
:func:`replay` with :func:`preview_replay`, :func:`count_dead`), cancel pending and running
events (:func:`cancel`, :func:`count_cancellable`) or move pending ones (:func:`reschedule`),
pause a queue (:func:`pause_queue`, :func:`resume_queue`, :func:`list_paused`), see the
ordering keys held back by a failed event (:func:`blocked_keys`), override a handler's rate
limit (:func:`override_rate`), keep the table small (:func:`prune`, :func:`count_prunable`)
and serve the web dashboard
(:func:`pgqueue_dashboard`), with the result types these return. The ``pgqueue`` command
calls the same functions. Like every write of pgqueue, each takes the caller's connection and
never opens a transaction of its own.
"""

from ._api import StatusReport, count_prunable, prune, status
from ._cancel import CancelCount, cancel, count_cancellable, reschedule
from ._dashboard import pgqueue_dashboard
from ._inspect import (
    BlockedKey,
    EventDetail,
    EventPage,
    EventSummary,
    HandlerDetail,
    LiveHandlerCount,
    LiveStatus,
    LiveTypeCounts,
    blocked_keys,
    get_event,
    list_events,
    live_status,
)
from ._pauses import QueuePause, list_paused, pause_queue, resume_queue
from ._steer import (
    ReplayPreview,
    ReplayResult,
    count_dead,
    discard,
    preview_replay,
    replay,
    retry,
)
from ._worker.presence import WorkerInfo, list_workers
from ._worker.rates import override_rate

__all__ = [
    "BlockedKey",
    "CancelCount",
    "EventDetail",
    "EventPage",
    "EventSummary",
    "HandlerDetail",
    "LiveHandlerCount",
    "LiveStatus",
    "LiveTypeCounts",
    "QueuePause",
    "ReplayPreview",
    "ReplayResult",
    "StatusReport",
    "WorkerInfo",
    "blocked_keys",
    "cancel",
    "count_cancellable",
    "count_dead",
    "count_prunable",
    "discard",
    "get_event",
    "list_events",
    "list_paused",
    "list_workers",
    "live_status",
    "override_rate",
    "pause_queue",
    "pgqueue_dashboard",
    "preview_replay",
    "prune",
    "replay",
    "reschedule",
    "resume_queue",
    "retry",
    "status",
]
