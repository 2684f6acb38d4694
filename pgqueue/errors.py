"""pgqueue.errors: every error class pgqueue raises, and the handler signal :class:`Discard`.

The tree (what each means is in its docstring)::

    PgQueueError                 also pgqueue.PgQueueError: catch it for "anything of ours"
    +-- ConfigurationError       a bad setting: schema name, DSN, option value
    +-- RegistryError            a handler registry that cannot be loaded or is inconsistent
    +-- DatabaseUnavailableError the database cannot be reached or refused the login
    +-- SchemaError              the schema is missing, behind or ahead of the code
    +-- PayloadError             also pgqueue.PayloadError: a payload enqueue cannot store
    +-- EventNotFound            pgqueue.wait: no such event
    +-- WaitTimeout              pgqueue.wait: no final state in time (also a TimeoutError)

    Discard                      also pgqueue.Discard: raised by a handler, not an error of ours

The three that a producer or a handler meets in its own code stay in ``pgqueue`` as well.
"""

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

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "Discard",
    "EventNotFound",
    "PayloadError",
    "PgQueueError",
    "RegistryError",
    "SchemaError",
    "WaitTimeout",
]
