"""Relay to RabbitMQ (the ``rabbitmq`` extra: aiormq).

The channel runs in publisher-confirm mode and every message is published ``mandatory``: a
message no queue takes comes back (Basic.Return) and is a failure, never "sent" (without
``mandatory`` the broker acks such a message and drops it). A batch is every publish in
flight at once, then every confirm awaited. RabbitMQ has no broker-side dedupe: the dedupe
id is the message's ``message_id``, and consumers drop what they have seen.

What an ack means: a persistent message (delivery mode 2, always sent here) routed to a
durable queue is on disk (classic) or on a majority of nodes (quorum) before the ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from .._errors import ConfigurationError
from .base import BrokerUnavailable, Relay, RelayMessage, Template

# Seconds a named exchange found by a passive declare is trusted before it is checked again.
EXCHANGE_TRUST = 5.0


def _aiormq() -> Any:
    try:
        import aiormq
    except ImportError:
        raise ConfigurationError("the RabbitMQ relay needs aiormq: pip install aiormq") from None
    return aiormq


class RabbitMQRelay(Relay):
    """Publishes events to a RabbitMQ exchange with a ``routing_key`` template.

    ``exchange`` "" is the default exchange (the routing key names the queue). The routing key
    may use ``{event_type}`` and ``{queue}``. Exchanges, queues and bindings are yours to
    declare: the relay never declares them. ``check_queues`` names queues whose type and
    durability the start-up check reports (AMQP cannot list an exchange's bindings; with the
    default exchange the routing keys are checked).
    """

    kind = "rabbitmq"

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = "",
        routing_key: str = "{event_type}",
        check_queues: Sequence[str] = (),
        confirm_timeout: float = 10.0,
    ) -> None:
        super().__init__(url)
        if not url.startswith(("amqp://", "amqps://")):
            raise ConfigurationError(
                f"a RabbitMQ URL starts with amqp:// or amqps://, not {self.where!r}"
            )
        self.exchange = exchange
        self.routing_key = Template(routing_key, "routing key")
        self.check_queues = tuple(check_queues)
        self.confirm_timeout = confirm_timeout
        self._conn: Any = None
        self._channel: Any = None
        self._exchange_ok_until = 0.0

    def destination(self, event_type: str, queue: str) -> str:
        """The routing key of an event."""
        return self.routing_key.render(event_type, queue)

    async def open(self) -> None:
        """Connect and open a confirm-mode channel whose returns raise."""
        aiormq = _aiormq()
        try:
            self._conn = await asyncio.wait_for(aiormq.connect(self.url), self.confirm_timeout)
            self._channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            await self.close()
            raise BrokerUnavailable(f"cannot connect to {self.where}: {_text(exc)}") from exc

    async def close(self) -> None:
        """Disconnect."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except Exception:
                return

    async def publish(self, messages: Sequence[RelayMessage]) -> list[BaseException | None]:
        """Every publish in flight at once (mandatory, persistent), then every confirm."""
        if self._conn is None or self._conn.is_closed:
            await self.close()
            await self.open()
        elif self._channel is None or self._channel.is_closed:
            await self._reopen_channel()
        spec = _aiormq().spec
        if self.exchange and time.monotonic() >= self._exchange_ok_until:
            missing = await self._check_exchange()
            if missing is not None:
                return [missing] * len(messages)
        channel = self._channel
        tasks = [
            asyncio.ensure_future(
                channel.basic_publish(
                    m.payload.encode(),
                    exchange=self.exchange,
                    routing_key=m.destination,
                    properties=spec.Basic.Properties(
                        content_type="application/json",
                        delivery_mode=2,
                        message_id=m.msg_id,
                        message_type=m.event_type,
                        timestamp=dt.datetime.fromisoformat(m.created_at),
                        app_id="pgqueue",
                        headers=m.metadata(),
                    ),
                    mandatory=True,
                    # Not waiting for each frame's write to drain (under the channel lock)
                    # lets the whole batch go out back to back; the confirm is still awaited.
                    wait=False,
                )
            )
            for m in messages
        ]
        done, _ = await asyncio.wait(tasks, timeout=self.confirm_timeout)
        # The broker closed the channel (no such exchange, access refused, ...): every message
        # of the batch fails its attempt with that reason, including those whose frames then
        # reached the closed channel and made the broker drop the whole connection
        # (CHANNEL_ERROR - expected 'channel.open'). Only a connection lost on its own (or no
        # confirm in time) means "broker unavailable".
        closed_by_broker = next(
            (
                t.exception()
                for t in tasks
                if t in done and t.exception() is not None and not _connection_error(t.exception())
                and type(t.exception()).__name__ != "PublishError"
            ),
            None,
        )  # fmt: skip
        results: list[BaseException | None] = []
        broken = False
        for task in tasks:
            if task not in done:
                task.cancel()
                broken = True
                results.append(BrokerUnavailable(f"no confirm within {self.confirm_timeout:g}s"))
                continue
            exc = task.exception()
            if exc is None:
                frame = task.result()
                if isinstance(frame, spec.Basic.Ack):
                    results.append(None)
                else:
                    refused = type(frame).__name__
                    results.append(RuntimeError(f"broker refused the message ({refused})"))
            elif type(exc).__name__ == "PublishError":
                results.append(LookupError(f"unroutable: no queue took it ({_return_text(exc)})"))
            elif _connection_error(exc) and closed_by_broker is None:
                broken = True
                results.append(BrokerUnavailable(_text(exc)))
            else:  # the broker closed the channel (e.g. no such exchange)
                results.append(RuntimeError(_text(closed_by_broker or exc)))
        if any(r is not None for r in results):
            self._exchange_ok_until = 0.0  # look again before the next batch
        if broken or self._conn is None or self._conn.is_closed:
            await self.close()
        elif self._channel is not None and self._channel.is_closed:
            await self._reopen_channel()
        return results

    async def _check_exchange(self) -> BaseException | None:
        """Is the exchange there? Checked before a batch (then trusted for EXCHANGE_TRUST
        seconds, and again after any failure): publishing a whole batch into a missing
        exchange closes the channel at the first message, and the frames already sent after
        it make the broker close the connection, which would look like an outage."""
        try:
            await self._channel.exchange_declare(self.exchange, passive=True)
        except Exception as exc:
            if _connection_error(exc):
                await self.close()
                raise BrokerUnavailable(_text(exc)) from exc
            await self._reopen_channel()
            return RuntimeError(_text(exc))
        self._exchange_ok_until = time.monotonic() + EXCHANGE_TRUST
        return None

    async def _reopen_channel(self) -> None:
        try:
            self._channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            await self.close()
            raise BrokerUnavailable(_text(exc)) from exc

    async def durability(self, destinations: Sequence[str]) -> list[str]:
        """The exchange exists; each known queue's type and durability. Probes run on a
        connection of their own: a failed probe closes its channel, and channel numbers
        reused too early made the broker close the whole connection."""
        conn = await asyncio.wait_for(_aiormq().connect(self.url), self.confirm_timeout)
        try:
            return await self._durability(conn, destinations)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2.0)

    async def _durability(self, conn: Any, destinations: Sequence[str]) -> list[str]:
        lines: list[str] = []
        queues = list(self.check_queues)
        if self.exchange:
            try:
                probe = await conn.channel()
                await probe.exchange_declare(self.exchange, passive=True)
                lines.append(f"exchange {self.exchange} exists")
                await _close_quietly(probe)
            except Exception as exc:
                lines.append(
                    f"WARNING: exchange {self.exchange!r} does not exist ({_text(exc)}): every "
                    f"publish fails until it is declared"
                )
            if not queues:
                lines.append(
                    f"cannot see over AMQP which queues exchange {self.exchange} routes to: make "
                    f"sure they are durable quorum queues (name them in check_queues to check)"
                )
        else:
            queues += [d for d in destinations if d not in queues]
        for name in queues:
            lines += await _queue_lines(conn, name)
        return lines


async def _queue_lines(conn: Any, name: str) -> list[str]:
    if not await _declares(conn, name, passive=True):
        return [f"WARNING: queue {name!r} does not exist: messages routed to it are returned"]
    # Declaring an existing queue with other properties fails (PRECONDITION_FAILED) and
    # changes nothing: that is how AMQP tells a queue's type and durability.
    if await _declares(conn, name, arguments={"x-queue-type": "quorum"}):
        return [f"queue {name}: quorum (durable, replicated)"]
    if await _declares(conn, name, arguments={"x-queue-type": "stream"}):
        return [f"queue {name}: stream (durable)"]
    if await _declares(conn, name):
        return [
            f"queue {name}: classic, durable",
            f"WARNING: queue {name} is a classic queue: a confirmed message lives on one "
            f"node only (use a quorum queue)",
        ]
    return [f"WARNING: queue {name} is NOT durable: a broker restart loses its messages"]


async def _declares(conn: Any, name: str, *, passive: bool = False, **kw: Any) -> bool:
    try:
        probe = await conn.channel()
    except Exception:
        return False
    try:
        await probe.queue_declare(name, passive=passive, durable=not passive, **kw)
        return True
    except Exception:
        return False
    finally:
        await _close_quietly(probe)


async def _close_quietly(channel: Any) -> None:
    try:
        if not channel.is_closed:
            await channel.close()
    except Exception:
        return


def _connection_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError) or (
        name
        in {
            "AMQPConnectionError",
            "ConnectionClosed",
            "ChannelInvalidStateError",
            "IncompatibleProtocolError",
        }
    )


def _return_text(exc: BaseException) -> str:
    returned = getattr(getattr(exc, "message", None), "delivery", None)
    code = getattr(returned, "reply_code", None)
    text = getattr(returned, "reply_text", None)
    return f"{code} {text}, routing key {getattr(returned, 'routing_key', '?')!r}"


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
