"""The exception tree of pgqueue.

::

    PgQueueError                 every error pgqueue raises on purpose; the CLI prints its
    |                            message as one line and exits 1
    +-- ConfigurationError       a bad setting: schema name, DSN, option value
    +-- RegistryError            a handler registry that cannot be loaded or is inconsistent
    +-- DatabaseUnavailableError the database cannot be reached or refused the login
    +-- SchemaError              the database schema is missing, behind or ahead of the code,
    |                            or the server is older than the supported PostgreSQL range
    +-- PayloadError             a payload that cannot be stored (not a JSON object, too big)
    +-- EventNotFound            pgqueue.wait: no such event (never enqueued, or pruned)
    +-- WaitTimeout              pgqueue.wait: no final state within the timeout (also a
                                 TimeoutError)

Handler signals (raised by handlers, not errors of pgqueue itself):

    Discard                      give up on this event for this handler now: dead, no retry

A message always says what is wrong and what to do next.
"""

from __future__ import annotations


class PgQueueError(Exception):
    """Base class of every error pgqueue raises on purpose."""


class ConfigurationError(PgQueueError):
    """A setting is invalid (schema name, DSN, numeric option)."""


class RegistryError(PgQueueError):
    """A handler registry cannot be loaded, or registers the same handler name twice."""


class DatabaseUnavailableError(PgQueueError):
    """The database cannot be reached, or refused the connection."""


class SchemaError(PgQueueError):
    """The pgqueue schema is missing, older or newer than this version of the code, or the
    server is a PostgreSQL older than the supported range (15 to 18)."""


class PayloadError(PgQueueError):
    """An event payload cannot be stored: not JSON-serialisable, not an object, too large."""


class EventNotFound(PgQueueError):
    """The event waited for does not exist (never enqueued, or pruned since)."""


class WaitTimeout(PgQueueError, TimeoutError):
    """The event did not reach a final state within the timeout; ``state`` is its last one."""

    def __init__(self, event_id: int, timeout: float, state: str) -> None:
        super().__init__(
            f"event {event_id} is still {state} after {timeout:g}s; wait longer (--timeout) "
            "or look at it with 'pgqueue events show'"
        )
        self.event_id = event_id
        self.state = state


class Discard(Exception):
    """Raise from a handler to mark this (event, handler) dead at once, without retries.

    The message is stored as the handler's last error.
    """
