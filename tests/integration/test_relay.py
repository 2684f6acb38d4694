"""Relays against the machine's brokers (unique streams / queues per test, removed after):
N events in, N messages out, each id once, payloads byte-equal; an unroutable message is a
failure; a relay beside a local handler keeps its own state; the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import tenacity

import pgqueue
import pgqueue.admin
from pgqueue import Registry, Worker, WorkerSettings
from pgqueue.relay import NatsRelay, RabbitMQRelay, RedisRelay
from tests.helpers import run_cli, wait_for
from tests.integration.relay_support import (
    AMQP_URL,
    NATS_URL,
    REDIS_URL,
    Private,
    check_exactly,
    counts,
    drop_redis,
    enqueue_n,
    nats_stream,
    rabbit_queue,
    read_nats,
    read_rabbit,
    read_redis,
    stored,
    unique,
)

N = 500
DUE = "SELECT count(*) FROM pgqueue.outbox WHERE state = 'pending' AND run_at <= now()"


def burst(**kw: Any) -> WorkerSettings:
    return WorkerSettings(burst=True, listen=False, **kw)


async def test_nats_relays_every_event_once_byte_equal(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    prefix = unique("relaytest.")
    async with nats_stream(NATS_URL, [f"{prefix}.>"]) as stream:
        await enqueue_n(conn, "order.placed", N)
        await enqueue_n(conn, "order.shipped", 7, queue="other")
        registry = Registry()
        registry.relay(
            "order.placed",
            "order.shipped",
            to=NatsRelay(NATS_URL, subject=prefix + ".{queue}.{event_type}"),
        )
        stats = await Worker(db_dsn, registry, burst(queues=("default", "other"))).run()
        assert stats.dead == 0
        assert await counts(conn) == {"done": N + 7}
        got = await read_nats(NATS_URL, stream)
        want = await stored(conn, "order.placed") | await stored(conn, "order.shipped")
        check_exactly(got, want)
        shipped = [g for g in got if g.event_type == "order.shipped"]
        assert {g.queue for g in shipped} == {"other"} and len(shipped) == 7
        # created_at round-trips exactly; the dedupe id names this database
        row = await conn.fetchrow("SELECT id, created_at FROM pgqueue.outbox LIMIT 1")
        mine = next(g for g in got if g.event_id == row["id"])
        assert dt.datetime.fromisoformat(mine.created_at) == row["created_at"]
        sysid = await conn.fetchval("SELECT system_identifier::text FROM pg_control_system()")
        dboid = await conn.fetchval(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        )
        assert mine.msg_id == f"pgq.{sysid}.{dboid}.pgqueue:{row['id']}"


async def test_nats_replay_publishes_again_under_the_same_id(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """Replay re-publishes to the relay only; inside the duplicate window NATS drops the copy
    by its Nats-Msg-Id (and acks it, so the replay completes)."""
    prefix = unique("relaytest.")
    async with nats_stream(NATS_URL, [f"{prefix}.>"]) as stream:
        await enqueue_n(conn, "order.placed", 20)
        registry = Registry()
        registry.relay("order.placed", to=NatsRelay(NATS_URL, subject=prefix + ".{event_type}"))
        await Worker(db_dsn, registry, burst()).run()
        result = await pgqueue.admin.replay(conn, handler="relay-nats", event_type="order.placed")
        assert result.replayed == 20
        await Worker(db_dsn, registry, burst()).run()
        assert await counts(conn) == {"done": 20}
        check_exactly(await read_nats(NATS_URL, stream), await stored(conn, "order.placed"))


async def test_nats_subject_without_stream_is_a_recorded_failure(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await enqueue_n(conn, "order.placed", 3)
    registry = Registry()
    relay = NatsRelay(NATS_URL, subject=unique("nostream.") + ".{event_type}")
    registry.relay("order.placed", to=relay, retry=pgqueue.RetryPolicy(stop=_stop(1)))
    stats = await Worker(db_dsn, registry, burst()).run()
    assert stats.dead == 3
    errors = await conn.fetch("SELECT last_error FROM pgqueue.outbox")
    assert all("unroutable" in r[0] for r in errors), errors


async def test_redis_relays_every_event_once_byte_equal(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    stream = unique("relaytest:")
    try:
        await enqueue_n(conn, "order.placed", N)
        registry = Registry()
        registry.relay("order.placed", to=RedisRelay(REDIS_URL, stream=stream + ":{event_type}"))
        stats = await Worker(db_dsn, registry, burst()).run()
        assert stats.dead == 0 and await counts(conn) == {"done": N}
        key = stream + ":order.placed"
        check_exactly(await read_redis(REDIS_URL, key), await stored(conn, "order.placed"))
        # replay: the dedupe script drops the copies (one entry per id stays)
        await pgqueue.admin.replay(conn, handler="relay-redis", event_type="order.placed")
        await Worker(db_dsn, registry, burst()).run()
        check_exactly(await read_redis(REDIS_URL, key), await stored(conn, "order.placed"))
    finally:
        await drop_redis(REDIS_URL, stream + ":order.placed")


async def test_rabbitmq_relays_every_event_once_byte_equal(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    async with rabbit_queue(AMQP_URL) as queue:
        await enqueue_n(conn, "order.placed", N)
        registry = Registry()
        registry.relay("order.placed", to=RabbitMQRelay(AMQP_URL, routing_key=queue))
        stats = await Worker(db_dsn, registry, burst()).run()
        assert stats.dead == 0 and await counts(conn) == {"done": N}
        check_exactly(await read_rabbit(AMQP_URL, queue), await stored(conn, "order.placed"))


async def test_rabbitmq_named_exchange_routing_key_template(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    exchange = unique("relaytest.x.")
    async with rabbit_queue(AMQP_URL, exchange=exchange, binding="other.#") as queue:
        await enqueue_n(conn, "order.placed", 30, queue="other")
        registry = Registry()
        relay = RabbitMQRelay(
            AMQP_URL, exchange=exchange, routing_key="{queue}.{event_type}", check_queues=[queue]
        )
        registry.relay("order.placed", to=relay)
        stats = await Worker(db_dsn, registry, burst(queues=("other",))).run()
        assert stats.dead == 0 and await counts(conn) == {"done": 30}
        got = await read_rabbit(AMQP_URL, queue)
        check_exactly(got, await stored(conn, "order.placed"))
        assert {g.queue for g in got} == {"other"}


async def test_rabbitmq_unroutable_is_a_failure_never_done(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """mandatory: a message no queue takes comes back and is a failed attempt (the broker
    would ack it and drop it otherwise)."""
    await enqueue_n(conn, "order.placed", 5)
    registry = Registry()
    relay = RabbitMQRelay(AMQP_URL, routing_key=unique("noqueue."))
    registry.relay("order.placed", to=relay, retry=pgqueue.RetryPolicy(stop=_stop(2)))
    stats = await Worker(db_dsn, registry, burst()).run()
    assert stats.done == 0
    rows = await conn.fetch("SELECT state, last_error, handlers::text FROM pgqueue.outbox")
    assert len(rows) == 5
    for state, error, handlers in rows:
        assert state in ("pending", "dead")  # retried later or out of attempts: never done
        assert "unroutable" in error and "NO_ROUTE" in error
        record = json.loads(handlers)["relay-rabbitmq"]
        assert record["state"] in ("pending", "dead") and record["attempts"] >= 1


async def test_relay_beside_a_local_handler_keeps_its_own_state(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """Same event type: the local handler fails and retries; the relay is done once and is
    not published again when the local handler's retry runs."""
    prefix = unique("relaytest.")
    async with nats_stream(NATS_URL, [f"{prefix}.>"]) as stream:
        await enqueue_n(conn, "order.placed", 10)
        registry = Registry()
        registry.relay("order.placed", to=NatsRelay(NATS_URL, subject=prefix + ".{event_type}"))
        runs: dict[int, int] = {}

        policy = pgqueue.RetryPolicy(wait=tenacity.wait_fixed(0.3), inline_max_wait=0.1)

        @registry.on("order.placed", retry=policy)
        async def local(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
            runs[ctx.event_id] = runs.get(ctx.event_id, 0) + 1
            if ctx.attempt == 1:
                raise RuntimeError("first try fails")

        await Worker(db_dsn, registry, burst()).run()
        rows = await conn.fetch("SELECT state, handlers::text FROM pgqueue.outbox")
        for state, handlers in rows:
            assert state == "pending"
            records = json.loads(handlers)
            assert records["relay-nats"]["state"] == "done"
            assert records["local"]["state"] == "pending" and records["local"]["attempts"] == 1

        async def due() -> bool:
            return bool(await conn.fetchval(DUE) == 10)

        await wait_for(due, message="the local handler's retries never fell due")
        await Worker(db_dsn, registry, burst()).run()
        assert await counts(conn) == {"done": 10}
        assert set(runs.values()) == {2}
        got = await read_nats(NATS_URL, stream)
        assert len(got) == 10  # published once each, not again on the local retry
        check_exactly(got, await stored(conn, "order.placed"))


async def test_relay_cli_burst(conn: asyncpg.Connection, db_dsn: str) -> None:
    stream = unique("relaytest:")
    try:
        await enqueue_n(conn, "order.placed", 50)
        result = run_cli(
            "relay", REDIS_URL, "--dsn", db_dsn, "--type", "order.placed",
            "--stream", stream + ":{queue}:{event_type}", "--burst",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "burst done: 50 done" in result.stdout
        assert "without AOF" in result.stderr  # the shared Redis keeps nothing: said at start
        got = await read_redis(REDIS_URL, stream + ":default:order.placed")
        check_exactly(got, await stored(conn, "order.placed"))
    finally:
        await drop_redis(REDIS_URL, stream + ":default:order.placed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://x", "--type", "a"], "the URL must start with nats://, amqp:// or redis://"),
        (["nats://127.0.0.1:4222", "--type", "a", "--stream", "s"], "--stream does not apply"),
        (["redis://127.0.0.1:6379", "--type", "a", "--stream", "{x}"], "may use only"),
        (["nats://127.0.0.1:1", "--type", "a", "--burst"], "cannot connect to nats://127.0.0.1:1"),
    ],
)
def test_relay_cli_bad_input_one_line(db_dsn: str, args: list[str], message: str) -> None:
    result = run_cli("relay", *args, "--dsn", db_dsn)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def _stop(n: int) -> Any:
    return tenacity.stop_after_attempt(n)


async def test_nats_message_over_max_payload_fails_alone(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    """One message the server cannot take fails its own attempt (and ends dead); the rest of
    its batch is relayed, and the broker does not count as unavailable."""
    server = Private.nats(tmp_path, max_payload=4000)
    await server.start()
    url = f"nats://127.0.0.1:{server.port}"
    try:
        async with nats_stream(url, ["big.>"]) as stream:
            await enqueue_n(conn, "order.placed", 5)
            big = await pgqueue.enqueue(conn, "order.placed", {"blob": "x" * 5000})
            registry = Registry()
            relay = NatsRelay(url, subject="big.{event_type}")
            registry.relay("order.placed", to=relay, retry=pgqueue.RetryPolicy(stop=_stop(1)))
            stats = await Worker(db_dsn, registry, burst()).run()
            assert (stats.done, stats.dead) == (5, 1)
            error = await conn.fetchval("SELECT last_error FROM pgqueue.outbox WHERE id = $1", big)
            assert "MaxPayloadError" in error
            want = await stored(conn, "order.placed")
            del want[big]
            check_exactly(await read_nats(url, stream), want)
    finally:
        server.kill()


async def test_rabbitmq_missing_exchange_is_a_recorded_failure(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """The broker closes the channel (404): a failed attempt each, never done, never waiting
    for ever as if the broker were down."""
    await enqueue_n(conn, "order.placed", 20)
    registry = Registry()
    relay = RabbitMQRelay(AMQP_URL, exchange=unique("noexchange."), routing_key="x")
    registry.relay("order.placed", to=relay, retry=pgqueue.RetryPolicy(stop=_stop(1)))
    stats = await Worker(db_dsn, registry, burst()).run()
    assert (stats.done, stats.dead) == (0, 20)
    errors = {r[0] for r in await conn.fetch("SELECT last_error FROM pgqueue.outbox")}
    assert all("NOT_FOUND" in e or "404" in e for e in errors), errors
