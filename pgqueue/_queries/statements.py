"""The statements of ``core``, ``admin``, ``steer`` and ``limits`` with the schema filled in
(``Statements``): the base of the area classes that add one typed method per statement."""

from __future__ import annotations

from .._settings import quote_ident
from .admin import (
    ACTIVE_COUNTS,
    DEAD_COUNTS,
    DEAD_HANDLERS,
    DONE_COUNTS,
    DONE_COUNTS_SAMPLED,
    INSERT_MANY_HEADERS,
    INSERT_ONE_HEADERS,
    OUTBOX_ROWS_ESTIMATE,
    PRUNE_BATCH,
    PRUNE_COUNT,
    QUEUE_DEPTHS,
    TEST_ADVANCE,
    TEST_EVENTS,
)
from .core import (
    CLAIM,
    COMPLETE,
    COMPLETE_DONE,
    HEARTBEAT,
    IDS_BY_KEYS,
    INSERT_MANY,
    INSERT_ONE,
    INSERT_PLAIN,
    NEXT_DUE,
    RECORD_EFFECT,
    RESCUE,
    RESCUE_PLAN,
    SKIPPERS,
)
from .limits import (
    LIMIT_OVERRIDE,
    LIMITS_LIST,
    LIMITS_READ,
    LIMITS_WRITE,
    SLOTS_ACQUIRE,
    SLOTS_RELEASE,
    SLOTS_RELEASE_ALL,
    SLOTS_RENEW,
)
from .steer import (
    COUNT_DEAD,
    DB_NOW,
    DISCARD_BATCH,
    GET_EVENT,
    LIST_EVENTS,
    LIVE_COUNTS,
    LIVE_HANDLERS,
    REPLAY_BATCH,
    REPLAY_COUNT,
    REPLAY_FIND,
    REPLAY_START,
    RETRY_BATCH,
)


class Statements:
    """The statements of ``core``, ``admin``, ``steer`` and ``limits`` for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = schema
        self.insert_one = INSERT_ONE.format(s=s)
        self.ids_by_keys = IDS_BY_KEYS.format(s=s)
        self.insert_many = INSERT_MANY.format(s=s)
        self.insert_plain = INSERT_PLAIN.format(s=s)
        self.record_effect = RECORD_EFFECT.format(s=s)
        self.claim = CLAIM.format(s=s)
        self.complete_done = COMPLETE_DONE.format(s=s)
        self.complete = COMPLETE.format(s=s)
        self.heartbeat = HEARTBEAT.format(s=s)
        self.rescue = RESCUE.format(s=s)
        self.rescue_plan = RESCUE_PLAN
        self.next_due = NEXT_DUE.format(s=s)
        self.skippers = SKIPPERS
        self.skippers_key = f"{schema}.outbox skippers"
        self.active_counts = ACTIVE_COUNTS.format(s=s)
        self.done_counts = DONE_COUNTS.format(s=s)
        self.done_counts_sampled = DONE_COUNTS_SAMPLED.format(s=s)
        self.outbox_rows_estimate = OUTBOX_ROWS_ESTIMATE.format(s=s)
        self.dead_handlers = DEAD_HANDLERS.format(s=s)
        self.prune_count = PRUNE_COUNT.format(s=s)
        self.prune_batch = PRUNE_BATCH.format(s=s)
        self.test_events = TEST_EVENTS.format(s=s)
        self.test_advance = TEST_ADVANCE.format(s=s)
        self.db_now = DB_NOW
        self.count_dead = COUNT_DEAD.format(s=s)
        self.retry_batch = RETRY_BATCH.format(s=s)
        self.discard_batch = DISCARD_BATCH.format(s=s)
        self.replay_find = REPLAY_FIND.format(s=s)
        self.replay_start = REPLAY_START.format(s=s)
        self.replay_count = REPLAY_COUNT.format(s=s)
        self.replay_batch = REPLAY_BATCH.format(s=s)
        self.list_events = LIST_EVENTS.format(s=s, order="id")
        self.list_events_by_state = LIST_EVENTS.format(s=s, order="id + 0")
        self.get_event = GET_EVENT.format(s=s)
        self.live_counts = LIVE_COUNTS.format(s=s)
        self.live_handlers = LIVE_HANDLERS.format(s=s)
        self.depths = QUEUE_DEPTHS.format(s=s)
        self.dead_by_type = DEAD_COUNTS.format(s=s)
        self.insert_one_headers = INSERT_ONE_HEADERS.format(s=s)
        self.insert_many_headers = INSERT_MANY_HEADERS.format(s=s)
        self.channel = f"{schema}.outbox"
        # -- limits
        self.limits_write = LIMITS_WRITE.format(s=s)
        self.limits_read = LIMITS_READ.format(s=s)
        self.slots_acquire = SLOTS_ACQUIRE.format(s=s)
        self.slots_release = SLOTS_RELEASE.format(s=s)
        self.slots_renew = SLOTS_RENEW.format(s=s)
        self.slots_release_all = SLOTS_RELEASE_ALL.format(s=s)
        self.limits_list = LIMITS_LIST.format(s=s)
        self.limit_override = LIMIT_OVERRIDE.format(s=s)
