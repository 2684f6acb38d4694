"""``pgqueue relay URL --type T``: a worker whose only handler is a relay to a broker, for
teams that want no Python code. Every option of ``pgqueue worker`` applies."""

from __future__ import annotations

from typing import Any

import click

from .._errors import ConfigurationError
from .._registry import Registry
from .._relay import relay_for_url
from .worker import WORKER_OPTIONS, serve, split_options

# Which options belong to which broker (by the URL's scheme).
_BROKER_OPTIONS = {
    "subject": ("nats", "tls"),
    "exchange": ("amqp", "amqps"),
    "routing_key": ("amqp", "amqps"),
    "check_queues": ("amqp", "amqps"),
    "stream": ("redis", "rediss"),
    "dedupe_seconds": ("redis", "rediss"),
}


@click.command("relay", params=list(WORKER_OPTIONS))
@click.argument("url", envvar="PGQUEUE_RELAY_URL")
@click.option(
    "--type",
    "event_types",
    multiple=True,
    required=True,
    help="Event type to relay (repeat for several).",
)
@click.option(
    "--name",
    default=None,
    help="The relay handler's name (its state, retry --handler, replay --handler) "
    "[default: relay-nats, relay-rabbitmq or relay-redis].",
)
@click.option(
    "--subject",
    default=None,
    help="NATS: subject template [default: {event_type}]; a JetStream stream must capture it.",
)
@click.option("--exchange", default=None, help="RabbitMQ: exchange [default: the default one].")
@click.option(
    "--routing-key",
    default=None,
    help="RabbitMQ: routing key template [default: {event_type}].",
)
@click.option(
    "--check-queue",
    "check_queues",
    multiple=True,
    help="RabbitMQ: a queue whose type and durability to check at start (repeatable).",
)
@click.option("--stream", default=None, help="Redis: stream key template [default: {event_type}].")
@click.option(
    "--dedupe-seconds",
    type=click.IntRange(1, 10 * 365 * 86_400),
    default=None,
    help="Redis: seconds a message id is remembered, to drop a copy [default: 3600].",
)
def relay_cmd(
    url: str,
    event_types: tuple[str, ...],
    name: str | None,
    **options: Any,
) -> None:
    """Relay every event of --type to the broker at URL (nats://, amqp:// or redis://).

    An event is marked relayed only once the broker confirmed it. Templates may use
    {event_type} and {queue}. While the broker is unreachable, events wait without spending
    attempts. See docs/relay.md for the message format and each broker's guarantees.
    """
    broker = {k: options.pop(k) for k in _BROKER_OPTIONS}
    scheme = url.partition("://")[0].lower()
    given = {k: v for k, v in broker.items() if v not in (None, ())}
    for key in given:
        if scheme not in _BROKER_OPTIONS[key]:
            flag = "--check-queue" if key == "check_queues" else "--" + key.replace("_", "-")
            raise ConfigurationError(
                f"{flag} does not apply to a {scheme or 'scheme-less'} URL; it is for "
                f"{_BROKER_OPTIONS[key][0]}:// relays"
            )

    def load() -> Registry:
        registry = Registry()
        registry.relay(*event_types, to=relay_for_url(url, **given), name=name)
        return registry

    load()  # a bad URL or template fails here, before any connection
    serve(load, *split_options(options))
