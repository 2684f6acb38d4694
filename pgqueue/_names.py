"""The naming rules of event types, queues, handlers, schedules and schemas, as the database
enforces them (tests/integration/test_names.py checks each against sql/).

Each rule is matched with ``fullmatch``: ``re.match`` with a ``$`` anchor also accepts a
trailing newline (``"order.placed\\n"``), which PostgreSQL's ``~ '...$'`` refuses. The
character classes are ASCII only, as in SQL: ``é`` is not a letter here.
"""

from __future__ import annotations

import re

# The limits of the outbox's domains (tests/unit/test_names_sql.py reads them from sql/).
MAX_EVENT_TYPE = 128  # sql/0010 outbox_event_type_length
MAX_PAYLOAD_BYTES = 1_048_576  # sql/0009 outbox_payload_size: 1 MiB of JSON text
MAX_IDEMPOTENCY_KEY = 200  # sql/0009 outbox_idempotency_key_length
MAX_ORDERING_KEY = 200  # sql/0017 outbox_ordering_key_length
MAX_HANDLER_NAME = 128  # sql/0006 handler_limits_handler_length
# outbox.id is a bigint: a larger id would overflow in the driver instead of saying "not found".
MAX_EVENT_ID = 2**63 - 1

# sql/0010 (domain event_type_name): outbox_event_type_format and outbox_event_type_length.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
# sql/0009 (domain queue_name).
QUEUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,62}")
# sql/0004 (schedules_name_format).
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}")
# Interpolated (quoted) into SQL text: the strictest rule we can give it.
SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# The wildcard handler record (pgqueue._models.ANY_HANDLER) covers every handler of an event.
RESERVED_HANDLER_NAMES = frozenset({"*"})

EVENT_TYPE_RULE = (
    "1-128 characters: ASCII letters, digits and _ . : / - (not starting with . : / -), "
    "e.g. 'order.placed'"
)
QUEUE_RULE = "1-63 ASCII letters, digits, '_', '.', ':' or '-' (not starting with . : -)"
SCHEDULE_NAME_RULE = "1-128 ASCII letters, digits or _ . : - (not starting with . : -)"


def event_type_ok(name: object) -> bool:
    """True when the outbox accepts ``name`` as an event type."""
    return isinstance(name, str) and EVENT_TYPE.fullmatch(name) is not None


def event_type_problem(name: object) -> str | None:
    """Why ``name`` cannot be an event type by length or kind, or None (the format is
    :func:`event_type_ok`'s; the two constraints of sql/0010 are reported apart)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_EVENT_TYPE:
        return f"event type must be a string of 1-{MAX_EVENT_TYPE} characters, got {name!r}"
    return None


def queue_ok(name: object) -> bool:
    """True when the outbox accepts ``name`` as a queue."""
    return isinstance(name, str) and QUEUE.fullmatch(name) is not None


def schedule_name_ok(name: object) -> bool:
    """True when the schedules table accepts ``name``."""
    return isinstance(name, str) and SCHEDULE_NAME.fullmatch(name) is not None


def schema_ok(name: object) -> bool:
    """True when ``name`` is a schema name pgqueue accepts."""
    return isinstance(name, str) and SCHEMA.fullmatch(name) is not None


def handler_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a handler name, or None when it can.

    The name is a key of the event's ``handlers`` jsonb, a row of ``effects`` and of
    ``handler_limits`` (1-128 characters): text PostgreSQL can store, so no NUL character and
    nothing that is not valid UTF-8 (a lone surrogate).
    """
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_HANDLER_NAME:
        return f"must be a string of 1-{MAX_HANDLER_NAME} characters"
    if "\x00" in name:
        return "must not contain a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it holds a lone surrogate)"
    if name in RESERVED_HANDLER_NAMES:
        return f"{name!r} is reserved (it stands for every handler of an event)"
    return None


# A handler's rate limit (sql/0018_rates.sql, domain handler_rate).
RATE_RULE = "N/s, N/m or N/h with 1 <= N <= 999,999,999 (e.g. '100/s')"
_RATE = re.compile(r"^[1-9][0-9]{0,8}/[smh]$")


def rate_problem(rate: object) -> str | None:
    """Why ``rate`` is not a valid handler rate, or None."""
    if not isinstance(rate, str) or not _RATE.match(rate):
        return f"must be {RATE_RULE}, not {rate!r}"
    return None
