"""The ordering key as the message key, on the machine's brokers: every relayed message of a
keyed event carries ``pgqueue-ordering-key`` (a NATS / RabbitMQ header, a Redis stream field),
an unkeyed one does not; an ordered relay publishes each key's events in id order."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import asyncpg

import pgqueue
import pgqueue.relay
from pgqueue import Registry, Worker, WorkerSettings
from pgqueue.relay import NatsRelay, RabbitMQRelay, RedisRelay
from tests.integration.relay_support import (
    AMQP_URL,
    NATS_URL,
    REDIS_URL,
    Got,
    check_exactly,
    drop_redis,
    nats_stream,
    rabbit_queue,
    read_nats,
    read_rabbit,
    read_redis,
    stored,
    unique,
)

KEYS = ("a", "b", "c")
FIELD = "pgqueue-ordering-key"


async def enqueue_keyed(conn: asyncpg.Connection) -> dict[int, str | None]:
    """60 keyed events over three keys, then 5 without a key; returns id -> key."""
    keys: list[str | None] = [KEYS[i % 3] for i in range(60)] + [None] * 5
    events = [
        pgqueue.Event(event_type="order.placed", payload={"n": i}, ordering_key=k)
        for i, k in enumerate(keys)
    ]
    ids = await pgqueue.enqueue_many(conn, events)
    return dict(zip(ids, keys, strict=True))


async def relay(conn: asyncpg.Connection, db_dsn: str, to: pgqueue.relay.Relay) -> int:
    """Burst workers until every event is done; returns the dead count. (A burst worker stops
    when nothing is due, and a key's later events are deferred while its head publishes: one
    burst may end before they fall due again.)"""
    registry = Registry()
    registry.relay("order.placed", to=to, ordered=True)
    settings = WorkerSettings(burst=True, listen=False)
    dead = 0
    deadline = asyncio.get_running_loop().time() + 60
    unfinished = "SELECT count(*) FROM pgqueue.outbox WHERE state NOT IN ('done', 'dead')"
    while await conn.fetchval(unfinished):
        assert asyncio.get_running_loop().time() < deadline, "events left unrelayed"
        dead += (await Worker(db_dsn, registry, settings).run()).dead
    return dead


async def check(conn: asyncpg.Connection, got: list[Got], keys: dict[int, str | None]) -> None:
    check_exactly(got, await stored(conn, "order.placed"))
    for g in got:
        assert g.headers.get(FIELD) == keys[g.event_id], g
    per_key: dict[str, list[int]] = defaultdict(list)
    for g in got:  # in the broker's order
        if keys[g.event_id] is not None:
            per_key[g.headers[FIELD]].append(g.event_id)
    for key, ids in per_key.items():
        assert ids == sorted(ids), f"key {key} out of order: {ids}"


async def test_nats_message_key_and_order(conn: asyncpg.Connection, db_dsn: str) -> None:
    prefix = unique("relayorder.")
    async with nats_stream(NATS_URL, [f"{prefix}.>"]) as stream:
        keys = await enqueue_keyed(conn)
        assert await relay(conn, db_dsn, NatsRelay(NATS_URL, subject=prefix + ".{event_type}")) == 0
        await check(conn, await read_nats(NATS_URL, stream), keys)


async def test_redis_message_key_and_order(conn: asyncpg.Connection, db_dsn: str) -> None:
    stream = unique("relayorder:")
    try:
        keys = await enqueue_keyed(conn)
        assert await relay(conn, db_dsn, RedisRelay(REDIS_URL, stream=stream)) == 0
        await check(conn, await read_redis(REDIS_URL, stream), keys)
    finally:
        await drop_redis(REDIS_URL, stream)


async def test_rabbitmq_message_key_and_order(conn: asyncpg.Connection, db_dsn: str) -> None:
    async with rabbit_queue(AMQP_URL) as queue:
        keys = await enqueue_keyed(conn)
        assert await relay(conn, db_dsn, RabbitMQRelay(AMQP_URL, routing_key=queue)) == 0
        await check(conn, await read_rabbit(AMQP_URL, queue), keys)
