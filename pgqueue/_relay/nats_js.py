"""Relay to NATS JetStream (the ``nats`` extra: nats-py).

A batch goes out with ``publish_async`` (every message in flight at once) and is confirmed
when each PubAck arrived. ``Nats-Msg-Id`` carries the dedupe id: the stream drops a second
copy inside its ``duplicate_window`` (default 2 minutes) and answers ``duplicate``, which
counts as confirmed. A subject that no stream captures is a failure (never "sent").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .._errors import ConfigurationError
from .base import BrokerUnavailable, Relay, RelayMessage, Template

# Errors nats-py raises for one message (too large, bad subject or header): that message fails
# its attempt; any other error means the connection is unusable.
_MESSAGE_ERRORS = frozenset({"MaxPayloadError", "BadSubjectError", "BadHeaderError"})
_NO_STREAM = b"no stream"  # a reply future's result when no stream captures the subject


def _nats() -> Any:
    try:
        import nats
    except ImportError:
        raise ConfigurationError("the NATS relay needs nats-py: pip install nats-py") from None
    return nats


class NatsRelay(Relay):
    """Publishes events to NATS JetStream, one subject per ``subject`` template.

    ``subject`` may use ``{event_type}`` and ``{queue}``; a JetStream stream must capture the
    subjects (create it yourself: the relay never creates streams). ``confirm_timeout``:
    seconds to wait for the PubAcks of one batch before the broker counts as unavailable.
    """

    kind = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        subject: str = "{event_type}",
        confirm_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(url)
        if not url.startswith(("nats://", "tls://")):
            raise ConfigurationError(
                f"a NATS URL starts with nats:// or tls://, not {self.where!r}"
            )
        self.subject = Template(subject, "subject")
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self._nc: Any = None
        self._js: Any = None
        self._inbox = ""
        self._token_at = 0
        self._next = 0  # reply tokens: unique per connection
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    def destination(self, event_type: str, queue: str) -> str:
        """The subject of an event."""
        return self.subject.render(event_type, queue)

    async def open(self) -> None:
        """Connect once (no client-side reconnects: the relay's breaker decides when to retry)."""
        nats = _nats()

        async def quiet(_: Exception) -> None:  # the breaker logs outages, once
            return None

        try:
            # max_reconnect_attempts=0 means "for ever" to nats-py's connect loop: 1 gives
            # up after the second try.
            self._nc = await asyncio.wait_for(
                nats.connect(
                    self.url,
                    allow_reconnect=False,
                    connect_timeout=self.connect_timeout,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=quiet,
                ),
                2 * self.connect_timeout + 1,
            )
        except Exception as exc:
            self._nc = None
            raise BrokerUnavailable(f"cannot connect to {self.where}: {_text(exc)}") from exc
        self._js = self._nc.jetstream()
        self._inbox = self._nc.new_inbox() + "."
        self._token_at = len(self._inbox)
        await self._nc.subscribe(self._inbox + "*", cb=self._on_reply)

    async def close(self) -> None:
        """Disconnect, dropping anything unconfirmed (it is published again later)."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), timeout=2.0)
            except Exception:
                return

    async def publish(self, messages: Sequence[RelayMessage]) -> list[BaseException | None]:
        """Publish every message at once (each with a reply subject of our inbox), then wait
        for all the PubAcks.

        Why not ``js.publish_async``: per message it takes a semaphore through ``wait_for``,
        draws a NUID and random bytes for a token, and decodes each PubAck into a dataclass;
        with our own inbox a reply is a dict lookup and a substring test. Profiled on 20,000
        events this halved the client's share of the relay's CPU.
        """
        if self._nc is None or self._nc.is_closed:
            await self.close()
            await self.open()
        nc, base, pending = self._nc, self._inbox, self._pending
        start = self._next
        self._next += len(messages)
        futures: list[asyncio.Future[bytes]] = []
        loop = asyncio.get_running_loop()
        try:
            for i, m in enumerate(messages, start):
                future: asyncio.Future[bytes] = loop.create_future()
                pending[str(i)] = future
                futures.append(future)
                try:
                    await nc.publish(
                        m.destination, m.payload.encode(), base + str(i), m.metadata("Nats-Msg-Id")
                    )
                except Exception as exc:
                    if type(exc).__name__ not in _MESSAGE_ERRORS:
                        raise
                    future.set_exception(exc)  # this message cannot be sent; the rest can
            done, _ = await asyncio.wait(futures, timeout=self.confirm_timeout)
        except Exception as exc:
            await self.close()
            raise BrokerUnavailable(_text(exc)) from exc
        finally:
            for i in range(start, start + len(futures)):
                pending.pop(str(i), None)
        results: list[BaseException | None] = []
        lost = False
        for f, m in zip(futures, messages, strict=True):
            if f not in done:
                lost = True
                results.append(BrokerUnavailable(f"no PubAck within {self.confirm_timeout:g}s"))
                continue
            if f.exception() is not None:
                results.append(f.exception())
                continue
            reply = f.result()
            if reply is _NO_STREAM:
                results.append(
                    LookupError(
                        f"unroutable: no JetStream stream captures subject {m.destination!r}"
                    )
                )
            elif b'"error"' in reply:
                results.append(
                    RuntimeError(
                        f"JetStream refused the message: {reply[:300].decode(errors='replace')}"
                    )
                )
            else:
                results.append(None)
        if lost:
            await self.close()
        return results

    async def _on_reply(self, msg: Any) -> None:
        future = self._pending.get(msg.subject[self._token_at :])
        if future is None or future.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == "503":  # no responders: no stream
            future.set_result(_NO_STREAM)
        else:
            future.set_result(msg.data)

    async def durability(self, destinations: Sequence[str]) -> list[str]:
        """The stream capturing each subject: storage, replicas, duplicate window."""
        lines: list[str] = []
        seen: set[str] = set()
        for subject in destinations:
            try:
                name = await self._js.find_stream_name_by_subject(subject)
            except Exception:
                lines.append(
                    f"WARNING: no JetStream stream captures subject {subject!r}: every publish "
                    f"to it fails until one does"
                )
                continue
            if name in seen:
                continue
            seen.add(name)
            config = (await self._js.stream_info(name)).config
            storage = getattr(config.storage, "value", config.storage)
            replicas = config.num_replicas or 1
            window = config.duplicate_window or 120.0
            lines.append(
                f"stream {name} (subject {subject}): storage={storage} replicas={replicas} "
                f"duplicate_window={window:g}s"
            )
            if storage != "file":
                lines.append(
                    f"WARNING: stream {name} keeps messages in memory: a restart loses them"
                )
            elif replicas < 3:
                lines.append(
                    f"WARNING: stream {name} has {replicas} replica(s): an acknowledged message "
                    f"is written but not fsynced, so a host crash can lose it (use replicas=3, "
                    f"or sync_interval: always on the server)"
                )
        return lines


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
