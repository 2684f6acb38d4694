"""Settings: one frozen model per concern, validated once at the edge (CLI or constructor).

Nothing here reads the environment; the CLI maps environment variables to options.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ._errors import ConfigurationError
from ._names import QUEUE_RULE, queue_ok, schema_ok

# The name pip knows this package by (the import name stays ``pgqueue``): "pgqueue" on PyPI is
# an unrelated project (0.6, 2016). Checked free on PyPI: `pip index versions pgqueue-outbox`.
DISTRIBUTION = "pgqueue-outbox"
DEFAULT_SCHEMA = "pgqueue"
DEFAULT_QUEUE = "default"


def validate_schema(name: str) -> str:
    """Return ``name`` if it is a valid schema name, else raise ConfigurationError."""
    # A plain lower-case identifier: it is interpolated (quoted) into SQL text, so it gets
    # the strictest check we can give it rather than trusting quoting alone.
    if not schema_ok(name):
        raise ConfigurationError(
            f"invalid schema name {name!r}: use 1-63 lower-case letters, digits or underscores, "
            "starting with a letter or underscore (e.g. --schema pgqueue)"
        )
    return name


def validate_queue(name: str) -> str:
    """Return ``name`` if it is a valid queue name, else raise ConfigurationError."""
    if not queue_ok(name):
        raise ConfigurationError(f"invalid queue name {name!r}: use {QUEUE_RULE}")
    return name


def quote_ident(name: str) -> str:
    """Quote an already validated identifier for SQL text."""
    return '"' + validate_schema(name).replace('"', '""') + '"'


def mask_dsn(dsn: str) -> str:
    """Return the DSN with any password replaced by ``***``, for printing and logging."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    if parts.scheme and parts.netloc:
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostport}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # key=value form: host=... password=...
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def dsn_without_password(dsn: str) -> tuple[str, bool]:
    """The DSN with any password removed (not masked: the result is meant to be pasted into a
    command, where the password then comes from PGPASSWORD or ~/.pgpass), and whether one was."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>", False
    if not (parts.scheme and parts.netloc):
        stripped = re.sub(r"(?i)\s*password\s*=\s*('[^']*'|\S+)", "", dsn)
        return stripped, stripped != dsn
    userinfo, at, hostport = parts.netloc.rpartition("@")
    had = ":" in userinfo
    netloc = f"{userinfo.split(':', 1)[0]}@{hostport}" if at else parts.netloc
    query = re.sub(r"(?i)(^|&)password=[^&]*", "", parts.query).lstrip("&")
    had = had or query != parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), had


SchemaName = Annotated[str, AfterValidator(validate_schema)]
QueueName = Annotated[str, AfterValidator(validate_queue)]


class WorkerSettings(BaseModel):
    """Everything a worker needs to know, validated once.

    Times are in seconds. The lease is renewed by the heartbeat every ``lease_seconds / 3``;
    an event whose worker died is picked up again ``lease_seconds`` after its last renewal.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_name: SchemaName = DEFAULT_SCHEMA
    queues: tuple[QueueName, ...] = (DEFAULT_QUEUE,)
    concurrency: int = Field(default=100, ge=1, le=10_000)
    # Measured on 2 cores (one no-op handler, 50,000 events): 200 -> 17.6k events/s, 500 ->
    # 23k, 1000 -> 27k, 2000 -> 34k. Each claim and completion statement has a fixed cost; a
    # larger batch also holds more events under one worker's lease, so 1000 is the default.
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    lease_seconds: float = Field(default=30.0, gt=0, le=86_400)
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    rescue_interval: float = Field(default=5.0, gt=0, le=3600)
    shutdown_timeout: float = Field(default=10.0, ge=0, le=86_400)
    burst: bool = False
    # False: poll only (``--poll-only``). Without a direct connection for LISTEN (see
    # ``listen_dsn``), a worker behind a transaction-mode pooler must poll.
    listen: bool = True
    # A connection for LISTEN other than the worker's DSN: needed when that DSN goes through a
    # transaction-mode pooler. Never in repr: it may hold a password.
    listen_dsn: str | None = Field(default=None, repr=False)
    # True: the DSN goes through a transaction-mode pooler (PgBouncer, pgcat, Supavisor, RDS
    # Proxy): no statement cache, no startup parameters, nothing kept in the session.
    pooled: bool = False
    worker_id: str | None = None
    # Threads for plain-def (sync) handlers, per worker process (see _worker/threads.py): at most
    # this many sync handlers run at once; the rest wait for a thread, not on their timeout.
    # Sized for I/O-bound work (an HTTP call, a Django query), like Dramatiq's 8 per process;
    # each thread that uses Django's ORM holds a database connection of its own.
    sync_threads: int = Field(default=10, ge=1, le=1000)
    # Connections of the pool that handlers borrow through ``ctx.conn`` (opened lazily).
    handler_pool_size: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> WorkerSettings:
        if self.heartbeat_seconds is not None and self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"--heartbeat ({self.heartbeat_seconds:g}s) must be shorter than --lease "
                f"({self.lease_seconds:g}s), or leases expire between renewals"
            )
        return self

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease renewals: a third of the lease unless set."""
        return self.heartbeat_seconds or self.lease_seconds / 3


def check_listen(settings: WorkerSettings) -> None:
    """Refuse LISTEN through a transaction-mode pooler: it would silently receive nothing."""
    if settings.pooled and settings.listen and not settings.burst and not settings.listen_dsn:
        raise ConfigurationError(
            "LISTEN does not work through a transaction-mode pooler (notifications never "
            "arrive): pass --listen-dsn (listen_dsn=) with a direct connection to "
            "PostgreSQL, or --poll-only (listen=False)"
        )


def worker_settings(**given: Any) -> WorkerSettings:
    """``WorkerSettings`` from the options a user gave, by field name; None means "not given",
    so the model's default applies. The model owns every default and bound: the first
    problem it finds becomes one ConfigurationError line."""
    try:
        return WorkerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        where = ".".join(map(str, first["loc"]))
        raise ConfigurationError(str(cause) if cause else f"{where}: {first['msg']}") from None
