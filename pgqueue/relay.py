"""pgqueue.relay: relay handlers' brokers, for ``Registry.relay(..., to=...)``.

:class:`NatsRelay` (NATS JetStream), :class:`RabbitMQRelay` and :class:`RedisRelay` (Redis
Streams) each import their client only when built (extras ``nats``, ``rabbitmq``, ``redis``).
:class:`Relay` is their base class: a relay publishes :class:`RelayMessage` batches and reports
a broker it cannot reach as :class:`BrokerUnavailable` (the message then waits without spending
an attempt). docs/relay.md has the guarantees and the figures.
"""

from ._relay.base import BrokerUnavailable, Relay, RelayMessage
from ._relay.nats_js import NatsRelay
from ._relay.rabbitmq import RabbitMQRelay
from ._relay.redis_streams import RedisRelay

__all__ = [
    "BrokerUnavailable",
    "NatsRelay",
    "RabbitMQRelay",
    "RedisRelay",
    "Relay",
    "RelayMessage",
]
