"""What every relay shares: the message built from an event, the destination templates, the
broker-unavailable error, the outage breaker and the base class of the per-broker relays.

The message contract (docs/relay.md): the body is the event's payload exactly as PostgreSQL
stores it (jsonb's text, never decoded and re-encoded); the metadata travels beside it as
broker headers / properties / stream fields: the dedupe id, the event id, type, queue,
created_at (ISO 8601, UTC) and the producer's trace context (``traceparent``, ``tracestate``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

from .._errors import ConfigurationError
from .._settings import mask_dsn

log = logging.getLogger("pgqueue.relay")

TEMPLATE_FIELDS = frozenset({"event_type", "queue"})


class BrokerUnavailable(Exception):
    """The broker could not be reached or did not answer in time: the message's fate is
    unknown, so it waits (no attempt spent) and goes again once the broker is back."""


class RelayMessage(NamedTuple):
    """One event as it goes to a broker (see docs/relay.md for the contract).

    A named tuple: a frozen dataclass's __init__ (one object.__setattr__ per field) is the
    slower build for one object per relayed event.
    """

    msg_id: str
    event_id: int
    event_type: str
    queue: str
    created_at: str
    payload: str
    trace: dict[str, str]
    destination: str
    # The event's ordering key (sql/0017): the message key, as the header / field
    # ORDERING_KEY_FIELD (only when the event has one).
    ordering_key: str | None = None

    def metadata(self, id_key: str = "pgqueue-msg-id") -> dict[str, str]:
        """The metadata as string pairs (headers / fields), trace context last; the dedupe
        id under ``id_key`` (NATS: ``Nats-Msg-Id``, which its streams dedupe on)."""
        pairs = {
            id_key: self.msg_id,
            "pgqueue-event-id": str(self.event_id),
            "pgqueue-event-type": self.event_type,
            "pgqueue-queue": self.queue,
            "pgqueue-created-at": self.created_at,
        }
        if self.ordering_key is not None:
            pairs[ORDERING_KEY_FIELD] = self.ordering_key
        pairs.update(self.trace)
        return pairs


# The message key: where consumers (and RabbitMQ's consistent-hash exchange, with
# `hash-header`) find the event's ordering key. See docs/relay.md.
ORDERING_KEY_FIELD = "pgqueue-ordering-key"


def trace_context(headers: str | None) -> dict[str, str]:
    """The string fields of the event's ``headers`` column (W3C ``traceparent`` /
    ``tracestate`` as written by the producer); anything else in it is ignored."""
    if not headers:
        return {}
    try:
        data = json.loads(headers)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def iso_utc(value: dt.datetime) -> str:
    """created_at as ISO 8601 in UTC with microseconds (what a consumer parses back)."""
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


class Template:
    """A destination template such as ``orders.{event_type}``: only ``{event_type}`` and
    ``{queue}`` may appear; rendered once per (event type, queue) and cached."""

    def __init__(self, text: str, what: str) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise ConfigurationError(f"invalid {what} template {text!r}: {exc}") from None
        unknown = fields - TEMPLATE_FIELDS
        if unknown or not text:
            raise ConfigurationError(
                f"invalid {what} template {text!r}: it may use only {{event_type}} and "
                f"{{queue}}" + (f", not {{{sorted(unknown)[0]}}}" if unknown else "")
            )
        self.text = text
        self._cache: dict[tuple[str, str], str] = {}

    def render(self, event_type: str, queue: str) -> str:
        """The destination of one event."""
        key = (event_type, queue)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self.text.format(event_type=event_type, queue=queue)
        return found


# The breaker: after a batch finds the broker unavailable, the relay stops publishing for
# OPEN_BASE seconds, doubling with each failed probe up to OPEN_CAP, and defers what it gets
# meanwhile (no attempt spent). Deferred events come back after max(the breaker's remaining
# time, DEFER_BASE doubling per deferral in a row, capped at DEFER_CAP), so a long outage
# costs one claim and one completion per event every ~10 s, never a busy loop, and the relay
# resumes within ~10 s of the broker's return.
OPEN_BASE = 0.5
OPEN_CAP = 5.0
DEFER_BASE = 0.5
DEFER_CAP = 10.0


class Breaker:
    """Per relay: is the broker reachable? Logs an outage once when it starts and once when
    it ends, and counts what it deferred meanwhile."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open_until = 0.0
        self.failures = 0
        self.down_since: float | None = None
        self.deferred = 0

    @property
    def up(self) -> bool:
        """False while an outage lasts (from its first failure to the next success)."""
        return self.down_since is None

    def allows(self, now: float) -> bool:
        """Whether a batch may be published now (closed, or open long enough for a probe)."""
        return now >= self.open_until

    def failed(self, now: float, error: BaseException) -> None:
        """A batch found the broker unavailable: open (again), longer each time."""
        self.failures += 1
        pause = min(OPEN_CAP, OPEN_BASE * (1 << min(self.failures - 1, 16)))
        self.open_until = now + pause
        if self.down_since is None:
            self.down_since = now
            log.warning(
                "relay %s: broker unavailable (%s); its events wait without spending attempts",
                self.name,
                _one_line(error),
                extra={"relay": self.name, "event": "relay_down", "error": type(error).__name__},
            )
        else:
            log.info(
                "relay %s: broker still unavailable after %.0fs (%s); %d deliveries deferred",
                self.name,
                now - self.down_since,
                _one_line(error),
                self.deferred,
                extra={"relay": self.name, "event": "relay_still_down"},
            )

    def succeeded(self, now: float) -> None:
        """A batch was confirmed: close, and say how long the outage lasted."""
        if self.down_since is not None:
            log.warning(
                "relay %s: broker reachable again after %.1fs; %d deliveries were deferred",
                self.name,
                now - self.down_since,
                self.deferred,
                extra={"relay": self.name, "event": "relay_up", "deferred": self.deferred},
            )
        self.failures = 0
        self.open_until = 0.0
        self.down_since = None
        self.deferred = 0

    def defer_delay(self, now: float, deferrals: int) -> float:
        """Seconds a deferred delivery waits (``deferrals``: times in a row before this)."""
        own = min(DEFER_CAP, DEFER_BASE * (1 << min(deferrals, 16)))
        self.deferred += 1
        return max(own, self.open_until - now) * random.uniform(1.0, 1.25)


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text.replace("\n", " ")[:300]


class Relay(ABC):
    """A broker a relay handler publishes to. Subclasses: :class:`NatsRelay`,
    :class:`RabbitMQRelay`, :class:`RedisRelay`.

    A relay object is used by one worker at a time (it holds that worker's connection). It
    publishes a batch pipelined and reports one result per message: None when the broker
    confirmed it, else the exception (a :class:`BrokerUnavailable` when the broker could not
    be reached: that message waits without spending an attempt).
    """

    #: URL scheme(s) and the default handler name.
    kind: str = ""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def where(self) -> str:
        """The URL with any password masked (for logs and errors)."""
        return mask_dsn(self.url)

    @abstractmethod
    def destination(self, event_type: str, queue: str) -> str:
        """Where an event of this type and queue goes (subject, routing key or stream)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise BrokerUnavailable when the broker cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect (never raises)."""

    @abstractmethod
    async def publish(self, messages: Sequence[RelayMessage]) -> list[BaseException | None]:
        """Publish ``messages`` pipelined and wait for every confirm; one result each."""

    @abstractmethod
    async def durability(self, destinations: Sequence[str]) -> list[str]:
        """Describe the broker's durability for these destinations; lines starting with
        ``WARNING:`` name a way a confirmed message can still be lost."""
