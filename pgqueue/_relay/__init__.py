"""Relays: handlers that forward outbox events to a broker (NATS JetStream, RabbitMQ, Redis
Streams), marking an event relayed only once the broker confirmed it. One module per broker,
each importing its client lazily (extras ``nats``, ``rabbitmq``, ``redis``); ``base`` holds
the message contract and the outage breaker, ``batches`` the worker's batch path. The public
names are in :mod:`pgqueue.relay`.

Kafka is left out: no Kafka broker can run on the machines this project is tested on.
"""

from __future__ import annotations

from typing import Any

from .._errors import ConfigurationError
from .base import Relay
from .nats_js import NatsRelay
from .rabbitmq import RabbitMQRelay
from .redis_streams import RedisRelay

SCHEMES: dict[str, type[Relay]] = {
    "nats": NatsRelay,
    "tls": NatsRelay,
    "amqp": RabbitMQRelay,
    "amqps": RabbitMQRelay,
    "redis": RedisRelay,
    "rediss": RedisRelay,
}


def relay_for_url(url: str, **options: Any) -> Relay:
    """The relay for ``url``, picked by its scheme (nats://, amqp://, redis://)."""
    scheme, sep, _ = url.partition("://")
    cls = SCHEMES.get(scheme.lower()) if sep else None
    if cls is None:
        raise ConfigurationError(
            f"cannot relay to {url.split('@')[-1]!r}: the URL must start with nats://, "
            f"amqp:// or redis:// (e.g. nats://127.0.0.1:4222)"
        )
    return cls(url, **options)


__all__ = ["SCHEMES", "relay_for_url"]
