"""Brokers for the relay tests: the machine's shared services (unique names per test, removed
after), private nats-server / redis-server instances on free ports with temp dirs (to kill and
restart), a TCP proxy the test owns (to cut RabbitMQ off), and readers that fetch every message
back with its metadata."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

import pgqueue

NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"

# Payloads whose text a decode and re-encode would change (1.10, the key order jsonb keeps,
# non-ASCII, a number beyond float): the broker must hold jsonb's text byte for byte.
TRICKY = [
    {"price": 1.10, "name": "Zoë ☃ \u2028", "big": 123456789012345678901234567890},
    {"nested": {"b": [1, 2.50, None, True], "a": "x"}, "quote": "\"'\\"},
    {"n": 1e-7, "empty": {}, "list": []},
]


def unique(prefix: str) -> str:
    """A name no other test (or run) uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def payload(i: int) -> dict[str, Any]:
    """The payload of the i-th test event."""
    return {"i": i, **TRICKY[i % len(TRICKY)]}


async def enqueue_n(
    conn: asyncpg.Connection, event_type: str, n: int, queue: str = "default"
) -> None:
    """Write ``n`` events of ``event_type``."""
    await pgqueue.enqueue_many(
        conn,
        [pgqueue.Event(event_type=event_type, payload=payload(i), queue=queue) for i in range(n)],
    )


async def stored(conn: asyncpg.Connection, event_type: str) -> dict[int, str]:
    """Event id -> the payload's text as PostgreSQL returns it."""
    rows = await conn.fetch(
        "SELECT id, payload::text FROM pgqueue.outbox WHERE event_type = $1", event_type
    )
    return {r[0]: r[1] for r in rows}


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Events by state."""
    rows = await conn.fetch("SELECT state, count(*) FROM pgqueue.outbox GROUP BY state")
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True)
class Got:
    """One message read back from a broker."""

    msg_id: str
    event_id: int
    event_type: str
    queue: str
    created_at: str
    payload: str
    headers: dict[str, str]


def _got(meta: dict[str, str], body: str) -> Got:
    return Got(
        meta.get("pgqueue-msg-id") or meta["Nats-Msg-Id"],
        int(meta["pgqueue-event-id"]),
        meta["pgqueue-event-type"],
        meta["pgqueue-queue"],
        meta["pgqueue-created-at"],
        body,
        meta,
    )


def check_exactly(got: list[Got], want: dict[int, str]) -> None:
    """Every event once (by dedupe id), its payload byte-equal; nothing else."""
    ids = [g.msg_id for g in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate messages"
    by_event = {g.event_id: g for g in got}
    assert sorted(by_event) == sorted(want), (
        f"{len(set(want) - set(by_event))} events missing, "
        f"{len(set(by_event) - set(want))} unexpected"
    )
    for event_id, text in want.items():
        assert by_event[event_id].payload == text, f"event {event_id}: payload differs"
        assert by_event[event_id].msg_id.endswith(f":{event_id}")


# -- readers ----------------------------------------------------------------------------------


async def read_nats(url: str, stream: str) -> list[Got]:
    """Every message of a JetStream stream, in order."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append(_got(dict(msg.headers or {}), msg.data.decode()))
        return out
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def nats_stream(url: str, subjects: list[str], **config: Any) -> AsyncIterator[str]:
    """A JetStream stream (file storage) capturing ``subjects``, deleted after."""
    import nats

    name = unique("RELAYTEST")
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=subjects, **config)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await nc.close()


async def read_redis(url: str, stream: str) -> list[Got]:
    """Every entry of a Redis stream."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries = await client.xrange(stream)
        out = []
        for _, fields in entries:
            body = fields.pop("payload")
            out.append(_got(fields, body))
        return out
    finally:
        await client.aclose()


async def drop_redis(url: str, stream: str) -> None:
    """Delete a stream and its dedupe keys."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{{{stream}}}:pgqueue-seen:*", count=1000)]
        await client.delete(stream, *keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def rabbit_queue(
    url: str, quorum: bool = True, exchange: str = "", binding: str = ""
) -> AsyncIterator[str]:
    """A durable (quorum) queue, on the default exchange or bound to a topic ``exchange``
    (declared here) with ``binding``; both deleted after."""
    import aiormq

    name = unique("relaytest.")
    conn = await aiormq.connect(url)
    ch = await conn.channel()
    args = {"x-queue-type": "quorum"} if quorum else {}
    await ch.queue_declare(name, durable=True, arguments=args)
    if exchange:
        await ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        await ch.queue_bind(name, exchange, routing_key=binding)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            ch2 = await conn.channel()
            await ch2.queue_delete(name)
            if exchange:
                await ch2.exchange_delete(exchange)
        await conn.close()


async def read_rabbit(url: str, queue: str) -> list[Got]:
    """Every message in a queue (taken off it)."""
    import aiormq

    conn = await aiormq.connect(url)
    try:
        ch = await conn.channel()
        out = []
        while True:
            msg = await ch.basic_get(queue, no_ack=True)
            if msg.delivery is None or getattr(msg.delivery, "name", "") == "Basic.GetEmpty":
                break
            if msg.header.properties is None or (not msg.body and msg.delivery_tag is None):
                break
            props = msg.header.properties
            meta = {
                k: v.decode() if isinstance(v, bytes) else str(v) for k, v in props.headers.items()
            }
            assert props.message_id == meta["pgqueue-msg-id"]
            assert props.delivery_mode == 2
            out.append(_got(meta, msg.body.decode()))
        return out
    finally:
        await conn.close()


# -- private brokers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 20.0) -> None:
    """Until something accepts on the port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"nothing listens on port {port} after {timeout}s") from None
            await asyncio.sleep(0.05)


class Private:
    """A broker process of our own (never the machine's service): start, kill -9, restart."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def start(self) -> None:
        self.spawn()
        await wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    @classmethod
    def nats(cls, tmp: Path, max_payload: int | None = None) -> Private:
        port = free_port()
        (tmp / "nats").mkdir(exist_ok=True)
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "nats")]
        if max_payload is not None:
            (tmp / "nats.conf").write_text(f"max_payload: {max_payload}\n")
            args += ["-c", str(tmp / "nats.conf")]
        return cls(args, port, tmp / "nats.log")

    @classmethod
    def redis(cls, tmp: Path, aof: bool = True) -> Private:
        port = free_port()
        (tmp / "redis").mkdir(exist_ok=True)
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(tmp / "redis"), "--save", "",
                "--appendonly", "yes" if aof else "no"]  # fmt: skip
        return cls(args, port, tmp / "redis.log")


class Proxy:
    """A TCP proxy to ``target_port`` that the test can cut (every connection closed, nothing
    accepted) and restore, on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        await self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            dst.transport.abort()


def parse_meta(text: str) -> dict[str, Any]:
    """JSON text -> dict (for headers columns)."""
    return dict(json.loads(text))
